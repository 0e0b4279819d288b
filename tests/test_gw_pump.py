"""The outbox pump (gateway/pump.py) at its own API: a real outbox, a ``send`` the test
acknowledges batch by batch, and a clock the test moves (pump's ``time.monotonic`` and
``asyncio.sleep``), so the pacing is checked to the microsecond without waiting for it.

The promises (docs/GATEWAY.md "What is promised"): batches leave in id order; a batch is
deleted only after its send returned (the PUBACK); at most ``inflight_max`` unacknowledged;
the backlog found at the start is paced at ``drain_rate_batches_s``, batches committed later
go at once; a send that raises ends the pump with the batch still stored, and the next pump
sends it again first; each delivered batch counted once (batches, bytes, readings, latency,
frames out by transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import gateway.pump as pump_mod
from gateway.config import MqttConfig
from gateway.metrics import Metrics
from gateway.outbox import Outbox, StoredBatch


class _Clock:
    """pump's monotonic clock and sleep: a sleep moves the clock at once, after letting the
    tasks that are ready run."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(0)  # what is ready runs first, as it would during a real sleep
        self.now += s


class _Link:
    """The far side of ``send``: it returns once the test acks that batch (or raises)."""

    def __init__(self, clock: _Clock, auto_ack: bool = False) -> None:
        self.clock = clock
        self.auto_ack = auto_ack
        self.sent: list[tuple[int, float, bytes]] = []  # (batch id, clock at send, payload)
        self.peak = 0
        self._acks: dict[int, asyncio.Future[None]] = {}

    @property
    def in_flight(self) -> list[int]:
        return sorted(i for i, f in self._acks.items() if not f.done())

    async def send(self, b: StoredBatch) -> None:
        self.sent.append((b.batch_id, self.clock.now, b.payload))
        if self.auto_ack:
            return
        fut = asyncio.get_running_loop().create_future()
        self._acks[b.batch_id] = fut
        self.peak = max(self.peak, len(self.in_flight))
        await fut

    def ack(self, batch_id: int, exc: BaseException | None = None) -> None:
        fut = self._acks[batch_id]
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(pump_mod, "time", SimpleNamespace(monotonic=c.monotonic))
    monkeypatch.setattr(pump_mod, "asyncio", SimpleNamespace(
        Semaphore=asyncio.Semaphore, TaskGroup=asyncio.TaskGroup, sleep=c.sleep))
    return c


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "o.db", 1 << 20, Metrics())
    yield ob
    ob.close()


def _ending(task: asyncio.Task[None]) -> str:
    return "cancelled" if task.cancelled() else repr(task.exception())


class _Pump:
    def __init__(self, outbox: Outbox, mqtt: MqttConfig, send: pump_mod.Send) -> None:
        self.wakeup = asyncio.Event()
        outbox.add_listener(self.wakeup.set)
        self.task = asyncio.create_task(pump_mod.pump(outbox, mqtt, outbox.metrics, self.wakeup, send))

    async def until(self, pred: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        """Wait for ``pred``; fail at once if the pump has ended (a crash is no reason to wait)."""
        deadline = time.monotonic() + timeout_s
        while not pred():
            if self.task.done():
                raise AssertionError(f"the pump ended waiting for {what}: {_ending(self.task)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def _pumping(outbox: Outbox, mqtt: MqttConfig, send: pump_mod.Send) -> AsyncIterator[_Pump]:
    p = _Pump(outbox, mqtt, send)
    try:
        yield p
    finally:
        await p.stop()


def _commit(outbox: Outbox, n: int, frames: int = 1) -> list[int]:
    return [outbox.commit_batch(b"batch-%d" % i * (i + 1), frames=frames + i, priority=0) for i in range(n)]


async def test_batches_go_in_id_order_and_each_is_deleted_and_counted_only_after_its_ack(
    outbox: Outbox, clock: _Clock
) -> None:
    m = outbox.metrics
    ids = _commit(outbox, 3)
    assert ids == [1, 2, 3]  # the very first id is sent too
    m.frames_out_ledger.committed(1, {"serial": 1})
    m.frames_out_ledger.committed(3, {"ble": 3})  # batch 2 is from before a restart: unknown
    link = _Link(clock)
    async with _pumping(outbox, MqttConfig(inflight_max=4, drain_rate_batches_s=1e6), link.send) as p:
        await p.until(lambda: len(link.sent) == 3, what="three batches sent")
        assert [(i, p) for i, _, p in link.sent] == [(i, b"batch-%d" % (i - 1) * i) for i in ids]
        assert outbox.depth == 3 and m.published_batches.total() == 0, "deleted before its ack"

        clock.now += 2.5
        link.ack(2)  # acks may come in any order
        await p.until(lambda: outbox.depth == 2, what="batch 2 deleted")
        assert outbox.pending_ids() == [1, 3]
        assert m.published_batches.total() == 1 and m.published_readings.total() == 2
        assert m.published_bytes.total() == len(b"batch-1" * 2)
        assert m.frames_out.values == {"unknown": 2}
        assert m.publish_latency.count == 1 and m.publish_latency.sum == pytest.approx(2.5, abs=1e-3)

        link.ack(1)
        link.ack(3)
        await p.until(lambda: outbox.depth == 0, what="every batch deleted")
        assert m.published_batches.total() == 3 and m.published_readings.total() == 1 + 2 + 3
        assert m.published_bytes.total() == sum(len(p) for _, _, p in link.sent)
        assert m.frames_out.values == {"unknown": 2, "serial": 1, "ble": 3}
        assert m.publish_latency.count == 3

        # A batch committed while the pump waits goes at once.
        (late,) = _commit(outbox, 1)
        await p.until(lambda: late in link.in_flight, what="a later batch sent")
        link.ack(late)
        await p.until(lambda: outbox.depth == 0, what="the later batch deleted")
    assert m.published_batches.total() == 4 and [i for i, _, _ in link.sent] == [1, 2, 3, 4]


async def test_a_failed_send_ends_the_pump_and_the_next_one_sends_that_batch_again_first(
    outbox: Outbox, clock: _Clock
) -> None:
    m = outbox.metrics
    _commit(outbox, 2)
    mqtt = MqttConfig(inflight_max=4, drain_rate_batches_s=1e6)
    link = _Link(clock)
    p = _Pump(outbox, mqtt, link.send)
    await p.until(lambda: link.in_flight == [1, 2], what="both sent")
    link.ack(1, ConnectionResetError("the broker went away"))
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(p.task, 5)
    assert caught.group_contains(ConnectionResetError)
    assert outbox.pending_ids() == [1, 2], "a batch without its ack left the outbox"
    assert m.published_batches.total() == 0 and m.frames_out.total() == 0

    again = _Link(clock, auto_ack=True)
    async with _pumping(outbox, mqtt, again.send) as p:
        await p.until(lambda: outbox.depth == 0, what="both sent again")
    assert [i for i, _, _ in again.sent] == [1, 2]
    assert m.published_batches.total() == 2


async def test_no_more_than_inflight_max_batches_wait_for_their_ack(outbox: Outbox, clock: _Clock) -> None:
    link = _Link(clock)
    async with _pumping(outbox, MqttConfig(inflight_max=3, drain_rate_batches_s=1e6), link.send) as p:
        _commit(outbox, 7)  # after the start: not a backlog
        await p.until(lambda: len(link.sent) == 3, what="a full window")
        assert link.in_flight == [1, 2, 3]
        link.ack(2)
        await p.until(lambda: len(link.sent) == 4, what="one more after an ack")
        assert link.in_flight == [1, 3, 4]
        for i in (1, 3, 4, 5, 6, 7):
            await p.until(lambda i=i: i in link.in_flight, what=f"batch {i} sent")  # type: ignore[misc]
            link.ack(i)
        await p.until(lambda: outbox.depth == 0, what="all deleted")
    assert link.peak == 3
    assert [i for i, _, _ in link.sent] == [1, 2, 3, 4, 5, 6, 7]


async def test_the_backlog_found_at_the_start_is_paced_and_later_batches_are_not(
    outbox: Outbox, clock: _Clock
) -> None:
    _commit(outbox, 4)
    link = _Link(clock, auto_ack=True)
    async with _pumping(outbox, MqttConfig(inflight_max=16, drain_rate_batches_s=4.0), link.send) as p:
        await p.until(lambda: outbox.depth == 0, what="the backlog sent")
        # 4 batches a second from the start (100.0): the first at once, each next 0.25 s on.
        assert [(i, t) for i, t, _ in link.sent] == [(1, 100.0), (2, 100.25), (3, 100.5), (4, 100.75)]
        clock.now = 200.0
        _commit(outbox, 3)
        await p.until(lambda: outbox.depth == 0, what="the later batches sent")
        assert [(i, t) for i, t, _ in link.sent[4:]] == [(5, 200.0), (6, 200.0), (7, 200.0)]
    assert outbox.metrics.publish_latency.sum == 0.0  # acked at the instant they were sent
