"""The batcher's deadline timer (gateway/batcher.py ``_arm``, ``_on_timer``, ``close``, ``run``):
one event-loop timer at the next deadline (never one per frame), a sooner deadline replacing
it, a timer fired early still doing what was due, a bug in a timed close reported and retried
a second later. The loop is a real asyncio loop that records the timers it is asked for and is
not left running: the test fires them by calling their callbacks, on a clock it sets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway.batcher
from gateway.config import BatchConfig
from gateway.flow import Accepted, Duplicate, Heard, Verdict
from tests.test_gw_durable import Clock, Stack
from tests.test_gw_support import frame


class Loop(asyncio.SelectorEventLoop):
    """An asyncio loop that keeps every timer handle it makes, with its callback."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[tuple[asyncio.TimerHandle, Callable[[], object]]] = []

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        h = super().call_at(when, callback, *args, context=context)
        self.timers.append((h, lambda: callback(*args)))
        return h

    def live(self) -> list[tuple[asyncio.TimerHandle, Callable[[], object]]]:
        return [t for t in self.timers if not t[0].cancelled()]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(gateway.batcher.time, "monotonic", c)
    yield c


class Running:
    """A Stack whose batcher's run() has started on a Loop (it took the loop and waits on
    its queue); frames are added as a transport's callback adds them."""

    def __init__(self, tmp_path: Path, cfg: BatchConfig, queued: list[Verdict] | None = None) -> None:
        self.stack = Stack(tmp_path / "outbox.db", cfg)
        self.batcher = self.stack.batcher
        self.loop = Loop()
        self.queue: asyncio.Queue[Verdict] = asyncio.Queue()
        for v in queued or []:
            self.queue.put_nowait(v)
        self.task = self.loop.create_task(self.batcher.run(self.queue))
        self.loop.run_until_complete(asyncio.sleep(0))  # one turn: run() starts and waits

    def verdict(self, node: int, fcnt: int, acks: list[bytes] | None = None) -> Accepted:
        v = self.stack.verifier.process(Heard(frame(node, fcnt), "ble" if acks is None else "serial", -70,
                                              None if acks is None else acks.append))
        assert isinstance(v, Accepted)
        return v

    def close(self) -> None:
        self.task.cancel()
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))
        self.loop.close()
        self.stack.outbox.close()


def test_one_timer_at_the_next_deadline_and_a_sooner_deadline_replaces_it(tmp_path: Path, clock: Clock) -> None:
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=1000, ack_max_delay_ms=200))
    r.batcher.add(r.verdict(1, 1))
    r.batcher.add(r.verdict(2, 1))  # the same deadlines: no new timer
    assert [h.when() for h, _ in r.loop.timers] == [1001.0]  # durable_ms after the first BLE frame
    acks: list[bytes] = []
    r.batcher.add(r.verdict(1, 2, acks))  # a node waits for its ack: sooner
    r.batcher.add(r.verdict(2, 2, acks))
    assert [h.when() for h, _ in r.loop.live()] == [1000.2] and len(r.loop.timers) == 2
    r.close()


def test_a_timer_due_sooner_is_kept(tmp_path: Path, clock: Clock) -> None:
    """The ack deadline first: a BLE frame's later stage deadline leaves that timer alone."""
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=1000, ack_max_delay_ms=200))
    r.batcher.add(r.verdict(1, 1, []))
    r.batcher.add(r.verdict(2, 1))
    assert [(h.when(), h.cancelled()) for h, _ in r.loop.timers] == [(1000.2, False)]
    r.close()


def test_the_timer_does_what_is_due_then_arms_for_what_is_left(tmp_path: Path, clock: Clock) -> None:
    """Fired a little early (the loop runs a timer up to its clock resolution before its
    time), it still stages; then it arms for the close."""
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=1000))
    r.batcher.add(r.verdict(1, 1))
    [(h, fire)] = r.loop.timers
    clock.now_s = h.when() - 1e-6
    fire()
    assert r.stack.staged() == [(1, 1)] and r.stack.stored() == []
    [(h2, fire2)] = r.loop.timers[1:]
    assert h2.when() == 1005.0
    clock.now_s = 1005.0
    fire2()
    assert r.stack.stored() == [(1, 1)] and len(r.loop.timers) == 2  # nothing left: no timer
    r.close()


def test_a_bug_in_a_timed_close_is_reported_and_retried_a_second_later(tmp_path: Path, clock: Clock) -> None:
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=10_000))
    errors: list[Exception] = []
    r.batcher.on_error = errors.append
    real_flush = r.batcher.flush
    bug = RuntimeError("a bug")

    def broken() -> None:
        raise bug

    r.batcher.flush = broken  # type: ignore[method-assign]
    r.batcher.add(r.verdict(1, 1))
    [(h, fire)] = r.loop.timers
    clock.now_s = h.when()
    fire()
    assert errors == [bug]
    [(retry, fire_again)] = r.loop.timers[1:]
    assert 0.9 < retry.when() - r.loop.time() <= 1.0
    r.batcher.flush = real_flush  # type: ignore[method-assign]
    fire_again()
    assert r.stack.stored() == [(1, 1)] and errors == [bug] and len(r.loop.timers) == 2
    r.close()


def test_close_stops_the_timer_and_nothing_arms_one_after(tmp_path: Path, clock: Clock) -> None:
    r = Running(tmp_path, BatchConfig(max_age_s=5.0))
    r.batcher.add(r.verdict(1, 1))
    [(h, _)] = r.loop.timers
    r.batcher.close()
    assert h.cancelled()
    r.batcher.flush()
    r.batcher.add(r.verdict(1, 2))
    assert len(r.loop.timers) == 1
    r.close()


def test_run_takes_every_verdict_already_queued_in_one_turn(tmp_path: Path, clock: Clock) -> None:
    stack = Stack(tmp_path / "first.db", BatchConfig())
    queued: list[Verdict] = []
    for n in (1, 2, 3):
        v = stack.verifier.process(Heard(frame(n, 1), "ble", -70, None))
        assert v is not None
        queued.append(v)
    stack.outbox.close()
    r = Running(tmp_path, BatchConfig(max_age_s=5.0), queued)
    assert r.queue.empty() and not r.task.done()
    r.batcher.flush()
    assert sorted(r.stack.stored()) == [(1, 1), (2, 1), (3, 1)]
    r.close()


def test_a_serial_repeat_of_a_waiting_ble_frame_brings_the_timer_to_ack_max_delay(tmp_path: Path, clock: Clock) -> None:
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=1000, ack_max_delay_ms=200))
    r.batcher.add(r.verdict(1, 1))
    acks: list[bytes] = []
    dup = r.stack.verifier.process(Heard(frame(1, 1), "serial", -70, acks.append))
    assert isinstance(dup, Duplicate)
    r.batcher.add(dup)
    [(h, fire)] = r.loop.live()
    assert h.when() == 1000.2
    clock.now_s = h.when()
    fire()
    assert r.stack.stored() == [(1, 1)] and len(acks) == 1
    r.close()


def test_a_failed_commits_staged_frames_get_a_timer_for_their_close(tmp_path: Path, clock: Clock) -> None:
    """The batch closed at max_records from a transport's callback, and its commit failed:
    the staged frame that opens the next batch closes max_age_s later without another frame."""
    r = Running(tmp_path, BatchConfig(max_records=2, max_age_s=5.0, durable_ms=1000))
    r.batcher.add(r.verdict(1, 1))
    [(h, fire)] = r.loop.timers
    clock.now_s = h.when()
    fire()  # staged; the timer is armed for the close
    real = r.stack.outbox.commit_batch

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError("I/O error")

    r.stack.outbox.commit_batch = broken  # type: ignore[method-assign]
    r.batcher.add(r.verdict(2, 1))
    r.stack.outbox.commit_batch = real  # type: ignore[method-assign]
    [(h2, fire2)] = r.loop.timers[1:]
    clock.now_s = h2.when()
    fire2()  # the failed batch's close: nothing due yet
    assert r.stack.stored() == [] and r.stack.staged() == [(1, 1)]
    [(h3, fire3)] = r.loop.timers[2:]
    assert h3.when() == 1001.0 + 5.0  # max_age_s after the commit failed
    clock.now_s = h3.when()
    fire3()
    assert r.stack.stored() == [(1, 1)] and len(r.loop.timers) == 3
    r.close()


def test_a_bug_in_a_timed_close_is_logged_by_default_and_retried(tmp_path: Path, clock: Clock,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Without a gateway's on_error (benchmarks, the batcher alone) the bug is logged, not
    raised into the event loop, and retried."""
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=10_000))

    def broken() -> None:
        raise RuntimeError("a bug")

    r.batcher.flush = broken  # type: ignore[method-assign]
    r.batcher.add(r.verdict(1, 1))
    [(h, fire)] = r.loop.timers
    clock.now_s = h.when()
    with caplog.at_level(logging.WARNING, logger="gateway.batcher"):
        fire()
    assert any("event=batch_timer_failed" in m for m in caplog.messages)
    assert [t.when() for t, _ in r.loop.timers[1:]] == [h.when() + 1.0]
    r.close()


def test_a_bug_whose_report_stops_the_batcher_is_not_retried(tmp_path: Path, clock: Clock) -> None:
    """on_error may shut the gateway down (close()): no retry timer on a closed batcher."""
    r = Running(tmp_path, BatchConfig(max_age_s=5.0, durable_ms=10_000))
    r.batcher.on_error = lambda exc: r.batcher.close()

    def broken() -> None:
        raise RuntimeError("a bug")

    r.batcher.flush = broken  # type: ignore[method-assign]
    r.batcher.add(r.verdict(1, 1))
    [(h, fire)] = r.loop.timers
    clock.now_s = h.when()
    fire()
    assert len(r.loop.timers) == 1
    r.close()


def test_a_closed_batcher_run_again_arms_its_timer_again(tmp_path: Path, clock: Clock) -> None:
    r = Running(tmp_path, BatchConfig(max_age_s=5.0))
    r.batcher.add(r.verdict(1, 1))
    r.batcher.flush()
    r.batcher.close()
    task = r.loop.create_task(r.batcher.run(r.queue))
    r.loop.run_until_complete(asyncio.sleep(0))
    r.batcher.add(r.verdict(1, 2))
    assert [h.when() for h, _ in r.loop.live()][-1] == 1001.0
    task.cancel()
    r.loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    r.close()
