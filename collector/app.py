"""The collector loop: fetch a batch, decode, commit, then acknowledge. Nothing else.

Order of a batch (the at-least-once half is the bus's, the exactly-once half is the store's):
  1. fetch up to ``max_messages`` deliveries (waits at most ``fetch_timeout_s``);
  2. decode each; one that can never be stored (``Poison``) is dead-lettered (published to
     ``urbansense.deadletter.<subject>`` and acknowledged) and counted by reason, never retried;
  3. build the rows of everything else and commit them in ONE transaction; while the database
     is unavailable, the same batch is retried with backoff (up to 5 s) and the messages are
     kept "in progress" so the bus does not hand them to another collector meanwhile;
     a batch the database rejects is split in halves until the message at fault is alone, and
     that one is dead-lettered;
  4. acknowledge the batch's messages, only now.
Batches commit one at a time, in order; the next batch is fetched and decoded (1-2) while one
commits.
A collector killed anywhere in 1-4 loses nothing: unacknowledged messages come back (to it or
to another collector), and rows already committed are not written twice (the store's keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from collector.config import CollectorConfig
from collector.decode import GatewayNote, Poison, Reading, decode
from collector.metrics import CollectorMetrics, start_http
from collector.rows import build
from collector.sources import Delivery, JetStreamSource, MqttSource, make_source
from collector.store import Store, StoreRejected, StoreUnavailable, open_store

_log = logging.getLogger("collector")
_RETRY_MAX_S = 5.0


class Collector:
    def __init__(self, cfg: CollectorConfig, store: Store | None = None,
                 source: JetStreamSource | MqttSource | None = None) -> None:
        self.cfg = cfg
        self.metrics = CollectorMetrics()
        self.store = store if store is not None else open_store(cfg.store_url)
        self.source = source if source is not None else make_source(cfg.source, cfg.collector_id)
        self.started = asyncio.Event()
        self.http_port: int | None = None
        self._stopping = asyncio.Event()
        self._t0 = time.time()
        self._last_commit_s: float | None = None
        self._store_ok = True
        self._last_store_error = ""

    async def run(self) -> None:
        server = None
        if self.cfg.http_port or self.cfg.http_port == 0:
            server = await start_http(self.metrics, self.status, self.cfg.http_listen, self.cfg.http_port)
            self.http_port = int(server.sockets[0].getsockname()[1])
        try:
            await self.source.start()
            _log.info("event=collector_started id=%s source=%s store=%s", self.cfg.collector_id,
                      self.cfg.source.kind, self.store.dialect)
            self.started.set()
            pending_task = asyncio.create_task(self._watch_pending())
            try:
                # One batch commits (its SQL runs on the database's core, this thread waits
                # on the socket) while the next is fetched and decoded.
                inflight: asyncio.Task[None] | None = None
                try:
                    while not self._stopping.is_set():
                        batch = await self.source.fetch(self.cfg.max_messages, self.cfg.fetch_timeout_s)
                        if not batch:
                            continue
                        good = await self._decode(batch)
                        if inflight is not None:
                            await self._wait_holding(inflight, [d for d, _ in good])
                            inflight = None
                        if good:
                            inflight = asyncio.create_task(self._commit(good))
                finally:
                    if inflight is not None:
                        await inflight
            finally:
                pending_task.cancel()
                await asyncio.gather(pending_task, return_exceptions=True)
        finally:
            await self.source.close()
            await asyncio.to_thread(self.store.close)
            if server is not None:
                server.close()

    async def stop(self) -> None:
        self._stopping.set()

    async def _wait_holding(self, inflight: asyncio.Task[None], held: list[Delivery]) -> None:
        """Wait for the commit in flight; the batch waiting behind it is kept "in progress"
        meanwhile (a database outage would otherwise have it redelivered to another)."""
        period_s = max(0.1, self.cfg.source.ack_wait_s / 3)
        while True:
            done, _ = await asyncio.wait({inflight}, timeout=period_s)
            if done:
                inflight.result()
                return
            await self.source.in_progress(held)

    async def handle(self, batch: list[Delivery]) -> None:
        """Decode, commit and acknowledge one batch (the loop overlaps two of these)."""
        good = await self._decode(batch)
        if good:
            await self._commit(good)

    async def _decode(self, batch: list[Delivery]) -> list[tuple[Delivery, list[Reading] | GatewayNote]]:
        good: list[tuple[Delivery, list[Reading] | GatewayNote]] = []
        for d in batch:
            try:
                decoded = decode(d.topic, d.data)
            except Poison as exc:
                await self._dead_letter(d, exc.reason, str(exc))
                continue
            leaf = "up" if isinstance(decoded, list) else decoded.leaf
            self.metrics.messages.inc(leaf)
            good.append((d, decoded))
        return good

    async def _commit(self, items: list[tuple[Delivery, list[Reading] | GatewayNote]]) -> None:
        readings = [r for _, x in items if isinstance(x, list) for r in x]
        notes = [x for _, x in items if isinstance(x, GatewayNote)]
        deliveries = [d for d, _ in items]
        delay_s = 0.1
        while True:
            now_s = time.time()
            rows = build(readings, notes, now_s)
            t0 = time.monotonic()
            try:
                stored = await asyncio.to_thread(self.store.commit, rows)
                break
            except StoreUnavailable as exc:
                self.metrics.store_errors.inc("unavailable")
                if self._store_ok or str(exc) != self._last_store_error:
                    _log.warning("event=store_unavailable error=%s", str(exc)[:300])
                self._store_ok, self._last_store_error = False, str(exc)
                await self.source.in_progress(deliveries)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay_s)
                if self._stopping.is_set():
                    return  # unacknowledged: redelivered to whoever runs next
                # Under a third of ack_wait_s: the "in progress" above must come round in time.
                delay_s = min(_RETRY_MAX_S, self.cfg.source.ack_wait_s / 3, delay_s * 2)
            except StoreRejected as exc:
                self.metrics.store_errors.inc("rejected")
                if len(items) == 1:
                    await self._dead_letter(items[0][0], "store_rejected", str(exc))
                    return
                half = len(items) // 2
                await self._commit(items[:half])
                await self._commit(items[half:])
                return
        if not self._store_ok:
            _log.warning("event=store_back")
        self._store_ok = True
        done = time.time()
        self._last_commit_s = done
        self.metrics.commit_seconds.observe(time.monotonic() - t0)
        self.metrics.commits.inc()
        self.metrics.readings_in.inc(amount=len(readings))
        self.metrics.stored.inc(amount=stored)
        self.metrics.duplicates.inc(amount=len(readings) - stored)
        if stored:
            # Latency of what this batch stored: its readings' gateway receive times.
            for row in rows.readings:
                self.metrics.latency.observe(max(0.0, done - row[2]))
        await self.source.ack(deliveries)
        self.metrics.acked.inc(amount=len(deliveries))

    async def _dead_letter(self, d: Delivery, reason: str, detail: str) -> None:
        self.metrics.dead_letters.inc(reason)
        _log.warning("event=dead_letter topic=%s reason=%s detail=%s bytes=%d", d.topic[:200],
                     reason, detail[:200], len(d.data))
        while True:
            try:
                await self.source.dead_letter(d, reason)
                return
            except Exception as exc:
                _log.info("event=dead_letter_retry error=%r", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.5)
                if self._stopping.is_set():
                    return

    async def _watch_pending(self) -> None:
        while True:
            n = await self.source.pending()
            if n is not None:
                self.metrics.pending.set(n)
            await asyncio.sleep(2.0)

    def status(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "collector": self.cfg.collector_id,
            "uptime_s": round(time.time() - self._t0, 1),
            "source": self.source.info(),
            "store": {"dialect": self.store.dialect, "ok": self._store_ok,
                      "last_error": "" if self._store_ok else self._last_store_error[:300],
                      "last_commit_s": self._last_commit_s},
            "messages": dict(m.messages.values),
            "readings_in": m.readings_in.total(),
            "stored": m.stored.total(),
            "duplicates": m.duplicates.total(),
            "dead_letters": dict(m.dead_letters.values),
            "store_errors": dict(m.store_errors.values),
            "acked": m.acked.total(),
            "pending": m.pending.get(),
            "latency_s": {"p50": m.latency.quantile(0.5), "p99": m.latency.quantile(0.99)},
        }
