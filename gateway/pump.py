"""The outbox pump: the one loop by which every publisher sends batches and deletes them.

Contract. Batches leave in id order, at most ``mqtt.inflight_max`` unacknowledged at once.
The backlog found when the session starts (ids up to the newest pending one then) is paced at
``mqtt.drain_rate_batches_s``, so a reconnect after an outage does not flood a metered link;
batches committed later go at once. A batch is deleted (``Outbox.ack``) only after ``send``
returned for it, that is after the broker's PUBACK (MQTT) or the stream's PubAck (JetStream);
``send`` raising ends the session through the task group with the batch still stored, and the
next session sends it again from the oldest. Each deleted batch is counted once
(published batches, bytes, readings; the frames-out ledger).

Why one home: the MQTT and JetStream publishers differ only in how a batch is carried. The
window, the pacing and the order "acknowledged, then deleted" are the durability contract
(docs/GATEWAY.md, "What is promised"), and were two copies of the same 40 lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.config import MqttConfig
from gateway.metrics import Metrics
from gateway.outbox import Outbox, StoredBatch

Send = Callable[[StoredBatch], Awaitable[None]]
"""Carry one batch; return only once the far side has it stored, raise otherwise."""


async def pump(outbox: Outbox, mqtt: MqttConfig, metrics: Metrics, wakeup: asyncio.Event, send: Send) -> None:
    """Send the outbox's batches until cancelled or until a ``send`` raises (then re-raised
    from the task group). ``wakeup`` is set by whoever commits a new batch."""
    window = asyncio.Semaphore(mqtt.inflight_max)
    ids = outbox.pending_ids()
    backlog_last = ids[-1] if ids else 0
    interval_s = 1.0 / mqtt.drain_rate_batches_s
    next_s = time.monotonic()
    last_id = 0
    async with asyncio.TaskGroup() as tg:
        while True:
            wakeup.clear()
            batches = outbox.peek(last_id, mqtt.inflight_max)
            if not batches:
                await wakeup.wait()
                continue
            for b in batches:
                await window.acquire()
                if b.batch_id <= backlog_last:
                    now = time.monotonic()
                    if next_s > now:
                        await asyncio.sleep(next_s - now)
                    next_s = max(now, next_s) + interval_s
                last_id = b.batch_id
                tg.create_task(_one(outbox, metrics, send, b, window))


async def _one(outbox: Outbox, metrics: Metrics, send: Send, b: StoredBatch, window: asyncio.Semaphore) -> None:
    t0 = time.monotonic()
    try:
        await send(b)
    finally:
        window.release()
    metrics.publish_latency.observe(time.monotonic() - t0)
    outbox.ack(b.batch_id)
    metrics.published_batches.inc()
    metrics.published_bytes.inc(amount=len(b.payload))
    metrics.published_readings.inc(amount=b.frames)
    metrics.frames_out_ledger.published(b.batch_id, b.frames)
