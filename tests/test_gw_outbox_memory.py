"""A broker outage under sustained load: the outbox stays bounded, memory and disk stay flat.

The broker is stopped and the gateway is fed, with back-pressure, several times what its small
outbox (256 KiB) can hold. The oldest ordinary batches are dropped and counted, an older alarm
batch outlives them, the process keeps running, Python heap / RSS / outbox files do not grow
between a warm-up phase (outbox already full) and the end; when the broker comes back,
everything still in the outbox reaches an independent subscriber exactly once, in order per node.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.flow import Heard
from tests.test_gw_support import Subscriber, frame, make_config, wait_for
from urbansense.wire.senml_reader import frames_from_pack

OUTBOX_MAX = 80 * 1024  # packs deflate ~5x here: the warm-up still overflows it
BATCH_MAX = 16 * 1024
FLOOD_NODES = range(3, 33)  # 30 ordinary nodes; node 1 raises alarms, node 2 is the oldest batch
# Eight quantities per frame (~130 payload bytes): the outbox fills with few frames to encrypt.
READINGS = {1: 1234, 2: 55, 3: 98765, 5: 3600, 6: 2150, 11: 3, 12: 420, 13: 0}

# Generous bounds, yet a per-frame leak over the 7500 frames of the measured phase exceeds them.
PY_HEAP_GROWTH_MAX = 512 * 1024  # observed: ~1 KiB; catches a leak of >= 70 B per frame
RSS_GROWTH_MAX = 24 * 1024 * 1024
PY_HEAP_PEAK_MAX = 4 * 1024 * 1024  # observed: ~1.1 MiB (the two bounded 1000-item queues)
DISK_GROWTH_MAX = 2 * 1024 * 1024
WAL_MAX = 6 * 1024 * 1024  # SQLite checkpoints at 1000 pages (4 MiB) and then reuses the file


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _disk(gw: Gateway) -> int:
    base = gw.config.outbox_path
    return sum(p.stat().st_size for p in (base, base.with_name(base.name + "-wal")) if p.exists())


def _flood(n_rounds: int, first_fcnt: int) -> list[bytes]:
    return [frame(node, fcnt, READINGS) for fcnt in range(first_fcnt, first_fcnt + n_rounds)
            for node in FLOOD_NODES]


async def _outbox_keys(gw: Gateway) -> list[tuple[int, int]]:
    """(node, fcnt) of what the outbox holds; the test's own decoding of ~3,000 frames runs
    off the gateway's event loop."""
    assert gw.outbox is not None
    batches = gw.outbox.peek(0, 1_000_000)
    return await asyncio.to_thread(lambda: [(n, f) for b in batches for n, f, _ in frames_from_pack(b.payload)])


@pytest.fixture
def quiet_outbox_log(caplog: pytest.LogCaptureFixture) -> None:
    # One outbox_full warning per evicting commit: keep pytest's log capture from holding
    # hundreds of records, which would show up as memory growth of the test, not the gateway.
    caplog.set_level(logging.ERROR, logger="gateway")


@pytest.fixture
def flood() -> tuple[list[bytes], list[bytes]]:
    """Warm-up (~2.3x the outbox) and measured (~3.8x) frames, encrypted before tracing."""
    return _flood(150, 1), _flood(250, 151)


@pytest.fixture
def traced(flood: tuple[list[bytes], list[bytes]]) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.fixture
async def setup(tmp_path: Path, mqtt_broker_factory: Any) -> AsyncIterator[tuple[Gateway, Any, Subscriber]]:
    broker = mqtt_broker_factory(persistence=True)
    sub = Subscriber(broker, persistent=True).start()
    await asyncio.wait_for(sub.ready.wait(), 10)
    cfg = make_config(tmp_path, broker, nodes=range(1, FLOOD_NODES.stop))
    cfg.queue_size = 1000  # a bounded ingress; the feeder waits on it
    cfg.outbox.max_bytes = OUTBOX_MAX
    cfg.batch.max_bytes = BATCH_MAX
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    await asyncio.wait_for(gw.started.wait(), 10)
    try:
        yield gw, broker, sub
        assert not task.done(), "the gateway stopped by itself"
    finally:
        await asyncio.wait_for(gw.stop(), 15)
        await task
        await sub.stop()


async def _feed(gw: Gateway, frames: list[bytes], check_every: int = 500) -> None:
    """Feed with back-pressure (as a transport would block), checking the bound as we go."""
    assert gw.outbox is not None
    for i, f in enumerate(frames):
        await gw.ingress.put(Heard(f, "test"))
        if i % check_every == 0:
            assert gw.outbox.bytes <= OUTBOX_MAX, f"outbox at {gw.outbox.bytes} B"


async def _settled(gw: Gateway) -> None:
    """Everything fed is verified and committed (the open batch closes after max_age_s)."""
    await wait_for(lambda: gw.ingress.empty() and gw.verdicts.empty(), what="queues drained")
    await wait_for(
        lambda: gw.metrics.readings_committed.total() == gw.metrics.frames_accepted.total(),
        what="all accepted frames committed",
    )


async def test_outage_under_load_keeps_outbox_bounded_memory_flat_and_delivers_once(
    setup: tuple[Gateway, Any, Subscriber], flood: tuple[list[bytes], list[bytes]],
    quiet_outbox_log: None, traced: None,
) -> None:
    gw, broker, sub = setup
    m = gw.metrics
    pub = gw.publisher
    assert gw.outbox is not None and pub is not None
    warmup, measured = flood

    await asyncio.wait_for(pub.connected.wait(), 10)
    await asyncio.to_thread(broker.stop)
    await wait_for(lambda: not pub.connected.is_set(), what="publisher noticed the outage")
    before_outage = len(sub.frames)

    # The oldest batch (ordinary), then an alarm batch, each committed on its own.
    await _feed(gw, [frame(2, f, READINGS) for f in range(1, 11)])
    await _settled(gw)
    await _feed(gw, [frame(1, f, {3: 5000 + f, 4: 1, 5: 3600}, ftype=2) for f in range(1, 6)])
    await _settled(gw)
    assert gw.outbox.depth == 2

    # Warm-up: the outbox fills and starts dropping; then the baseline.
    t0 = time.monotonic()
    await _feed(gw, warmup)
    await _settled(gw)
    assert m.outbox_dropped_readings.total() > 0, "warm-up should already overflow the outbox"
    gc.collect()
    heap0, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    rss0, disk0 = _rss(), _disk(gw)
    dropped0 = m.outbox_dropped_readings.total()

    await _feed(gw, measured)
    await _settled(gw)
    gc.collect()
    heap1, heap_peak = tracemalloc.get_traced_memory()
    rss1, disk1 = _rss(), _disk(gw)
    t_flood = time.monotonic() - t0

    # Alive, bounded, dropping the oldest ordinary readings and counting them.
    fed = 10 + 5 + len(warmup) + len(measured)
    assert m.frames_accepted.total() == fed and m.readings_committed.total() == fed
    assert gw.outbox.bytes <= OUTBOX_MAX
    assert m.outbox_bytes.get() == gw.outbox.bytes
    stored = await _outbox_keys(gw)
    dropped = m.outbox_dropped_readings.total()
    assert dropped > 2 * fed // 3 and dropped - dropped0 >= len(measured) * 0.9
    assert dropped + len(stored) == fed, "every committed reading is either stored or counted"
    assert m.outbox_dropped_batches.get("ordinary") > 0 and m.outbox_dropped_batches.get("alarm") == 0
    assert "urbansense_gateway_outbox_dropped_readings_total " + str(int(dropped)) in m.render()
    status = gw.status()["outbox"]
    assert status["dropped_readings"] == dropped and status["bytes"] <= status["max_bytes"]
    # Alarms are kept longest: the alarm batch outlived the older ordinary one and every
    # ordinary batch of the warm-up; what is left of the flood is its newest part.
    assert [(1, f) for f in range(1, 6)] == [k for k in stored if k[0] == 1]
    assert not any(n == 2 for n, _ in stored)
    assert min(f for n, f in stored if n != 1) > 150
    assert max(f for n, f in stored if n != 1) == 400

    # Flat: no Python-heap, RSS or disk growth proportional to the frames of the measured phase.
    heap_growth, peak_growth = heap1 - heap0, heap_peak - heap0
    print(f"\nframes={fed} flood={t_flood:.1f}s dropped={dropped:.0f} "
          f"stored={len(stored)} heap_delta={heap_growth} heap_peak_delta={peak_growth} "
          f"rss_delta={rss1 - rss0} disk={disk0}->{disk1} "
          f"db={gw.config.outbox_path.stat().st_size}")
    assert heap_growth < PY_HEAP_GROWTH_MAX, f"Python heap grew by {heap_growth} B"
    assert peak_growth < PY_HEAP_PEAK_MAX, f"Python heap peaked {peak_growth} B above baseline"
    assert rss1 - rss0 < RSS_GROWTH_MAX, f"RSS grew by {rss1 - rss0} B"
    assert disk1 - disk0 < DISK_GROWTH_MAX, f"outbox files grew from {disk0} to {disk1} B"
    db_bytes = gw.config.outbox_path.stat().st_size
    assert db_bytes < 4 * OUTBOX_MAX, f"outbox.db is {db_bytes} B for {OUTBOX_MAX} B of payload"
    assert disk1 < db_bytes + WAL_MAX, f"WAL beyond its auto-checkpoint size: {disk1 - db_bytes} B"

    # The broker returns: what the outbox holds arrives exactly once, in order per node.
    await asyncio.to_thread(broker.start)
    await wait_for(lambda: gw.outbox is not None and gw.outbox.depth == 0, timeout_s=20,
                   what="outbox drained")
    await wait_for(lambda: len(sub.frames) - before_outage >= len(stored), timeout_s=10,
                   what="subscriber got the backlog")
    got = sub.keys()[before_outage:]
    dupes = [k for k, c in Counter(got).items() if c > 1]
    assert not dupes, f"{len(dupes)} readings delivered twice, e.g. {dupes[:5]}"
    assert sorted(got) == sorted(stored)
    for node in {n for n, _ in stored}:
        seq = [f for n, f in got if n == node]
        assert seq == sorted(seq), f"node {node} out of order"
    assert m.published_readings.total() - before_outage == len(stored)
