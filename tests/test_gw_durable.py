"""BLE frames are on disk within batch.durable_ms of acceptance while their batch stays open
(gateway/batcher.py ``stage``): what a crash before the batch closes leaves, and what the
next start makes of it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.batcher
from gateway.batcher import Batcher
from gateway.config import BatchConfig, HealthConfig
from gateway.flow import Duplicate, Heard
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import PRIORITY_ALARM, PRIORITY_ORDINARY, Outbox
from gateway.outbox._staging import StagedFrame, decode, encode
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.verify import Verifier
from tests.test_gw_support import KEYS, frame
from urbansense.wire.protocol import T_ALARM, NodeKeys
from urbansense.wire.senml_reader import frames_from_pack

REGISTRY = Registry(Node(n, "water", NodeKeys(k)) for n, k in KEYS.items())


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(gateway.batcher.time, "monotonic", c)
    yield c


class Stack:
    """verify -> batch -> outbox on one file, as the gateway builds them at start."""

    def __init__(self, path: Path, cfg: BatchConfig) -> None:
        self.metrics = Metrics()
        self.outbox = Outbox(path, 1 << 26, self.metrics)
        self.replay = ReplayTable(self.outbox.load_nodes())
        self.verifier = Verifier(REGISTRY, self.replay, self.metrics)
        health = Health(HealthConfig(), REGISTRY, lambda *a: None, 0.0)
        self.batcher = Batcher(cfg, self.outbox, REGISTRY, self.replay, health, self.metrics)

    def hear(self, data: bytes, transport: str = "ble", reply: Any = None) -> Any:
        v = self.verifier.process(Heard(data, transport, -70, reply))
        if v is not None:
            self.batcher.add(v)
        return v

    def staged(self) -> list[tuple[int, int]]:
        """(node, fcnt) staged since the last batch closed: the journal's file up to its
        write position (older records after it are in batches)."""
        frames, _ = decode(self.outbox._staging.path.read_bytes()[: self.outbox._staging.size])
        return [(f.node_id, f.fcnt) for f in frames]

    def stored(self) -> list[tuple[int, int]]:
        return [(n, f) for b in self.outbox.peek(0, 1000) for n, f, _ in frames_from_pack(b.payload)]


def test_a_ble_frame_is_on_disk_within_durable_ms_and_a_crash_keeps_it(tmp_path: Path, clock: Clock) -> None:
    """The batch stays open (max_age_s 60 s); 50 ms after acceptance the frames and their
    replay marks are on disk. A process that dies then (the first stack is never closed)
    leaves them staged: the next start makes them a batch, and hearing them again is a
    duplicate, not a new frame."""
    path = tmp_path / "outbox.db"
    a = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
    for n in range(1, 11):
        a.hear(frame(n, 7))
    a.batcher.tick()
    assert a.staged() == []  # not yet: 0 ms
    clock.now_s += 0.05
    a.batcher.tick()
    assert a.staged() == [(n, 7) for n in range(1, 11)] and a.stored() == []  # batch still open
    assert a.metrics.staging_commits.total() == 1
    a.hear(frame(11, 7))
    b = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # the crash: a is gone
    assert sorted(b.stored()) == [(n, 7) for n in range(1, 11)]  # frame 11 was 0 ms old: lost
    assert b.staged() == []
    again = [b.hear(frame(n, 7)) for n in range(1, 11)]
    assert all(isinstance(v, Duplicate) for v in again)
    assert b.metrics.frames_accepted.total() == 0
    a.outbox.close()
    b.outbox.close()


def test_a_journal_record_already_in_a_batch_is_not_recovered_twice(tmp_path: Path, clock: Clock) -> None:
    """The journal is written from its start again after each batch, never truncated: the
    records of earlier batches stay in the file behind the new ones. At the next start their
    counters (committed with their batch) say they are in it already, so each frame is stored
    once; a torn last record ends the reading."""
    path = tmp_path / "outbox.db"
    a = Stack(path, BatchConfig(max_age_s=1.0, durable_ms=50))
    for n in range(1, 6):
        a.hear(frame(n, 3))
    clock.now_s += 0.05
    a.batcher.tick()
    journal = a.outbox._staging.path
    kept = journal.read_bytes()
    clock.now_s += 1.0
    a.batcher.tick()  # the batch closes; its records stay in the file
    assert sorted(a.stored()) == [(n, 3) for n in range(1, 6)] and a.staged() == []
    assert journal.read_bytes() == kept
    a.hear(frame(6, 4))
    clock.now_s += 0.05
    a.batcher.tick()  # staged over the first record; (2..5, 3) still behind it
    assert a.staged() == [(6, 4)]
    assert [(f.node_id, f.fcnt) for f in decode(journal.read_bytes())[0]] == [(6, 4)] + [(n, 3) for n in range(2, 6)]
    b = Stack(path, BatchConfig(max_age_s=1.0, durable_ms=50))  # the crash: a is gone
    assert sorted(b.stored()) == [(n, 3) for n in range(1, 6)] + [(6, 4)]  # each once
    assert b.staged() == []
    b.outbox.close()
    journal.write_bytes(kept + kept[:7])  # old records, and a torn append after them
    c = Stack(path, BatchConfig(max_age_s=1.0, durable_ms=50))
    assert sorted(c.stored()) == [(n, 3) for n in range(1, 6)] + [(6, 4)]
    assert c.staged() == []
    c.outbox.close()
    a.outbox.close()


def test_staging_leaves_batches_whole_and_the_close_removes_what_it_staged(tmp_path: Path, clock: Clock) -> None:
    """250 frames at 10 ms intervals, staged every 100 ms: packs still close at 100 frames,
    each frame is stored once, nothing stays staged."""
    s = Stack(tmp_path / "outbox.db", BatchConfig(max_records=100, max_age_s=60.0, durable_ms=100))
    for i in range(250):
        s.hear(frame(1 + i % 30, 1 + i // 30))
        clock.now_s += 0.01
        s.batcher.tick()
    clock.now_s += 60.0
    s.batcher.tick()
    batches = s.outbox.peek(0, 100)
    assert [b.frames for b in batches] == [100, 100, 50]
    assert len(s.stored()) == len(set(s.stored())) == 250
    assert s.staged() == []
    assert 20 <= s.metrics.staging_commits.total() <= 26


def test_frames_that_wait_for_a_serial_ack_are_not_staged(tmp_path: Path, clock: Clock) -> None:
    """A serial node keeps its frame until the ack, which follows the batch's commit: the
    batch closes after ack_max_delay_ms, and staging would be a second write for nothing."""
    s = Stack(tmp_path / "outbox.db", BatchConfig(max_age_s=60.0, durable_ms=10, ack_max_delay_ms=200))
    acks: list[bytes] = []
    s.hear(frame(1, 1), "serial", acks.append)
    clock.now_s += 0.05
    s.batcher.tick()
    assert s.staged() == [] and s.metrics.staging_commits.total() == 0 and not acks
    clock.now_s += 0.2
    s.batcher.tick()
    assert s.stored() == [(1, 1)] and len(acks) == 1


_frames = st.lists(st.builds(StagedFrame, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                             st.integers(0, 1), st.integers(0, 100), st.binary(max_size=80)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(_frames, st.binary(max_size=64))
def test_the_journal_reads_back_every_whole_record_and_stops_at_damage(frames: list[StagedFrame],
                                                                       tail: bytes) -> None:
    """Any bytes after the whole records (a torn append, garbage) are ignored, never raise."""
    data = encode(frames)
    got, size = decode(data + tail)
    assert got[:len(frames)] == frames and size >= len(data)
    decode(tail)  # arbitrary bytes alone: no exception


def _broken_commit(*args: Any, **kwargs: Any) -> int:
    raise sqlite3.OperationalError("disk I/O error")


def test_frames_staged_before_a_failed_commit_are_stored_by_the_next_one(tmp_path: Path, clock: Clock) -> None:
    """A commit fails (I/O error) after its BLE frames were staged: they are on disk, in the
    journal, and the next commit stores them (before the fix, the next batch that staged
    cleared the journal, and a later one wrote over them: lost without any crash). Serial
    frames of the failed batch are not kept (their nodes retransmit), nor is anything stored
    twice, then or after a crash."""
    path = tmp_path / "outbox.db"
    a = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
    acks: list[bytes] = []
    a.hear(frame(1, 7))
    a.hear(frame(2, 7))
    clock.now_s += 0.05
    a.batcher.tick()
    a.hear(frame(4, 7))  # not staged yet when the commit fails: lost to this gateway, counted
    a.hear(frame(3, 7), "serial", acks.append)
    stronger = a.verifier.process(Heard(frame(2, 7), "ble", -40, None))  # its records encoded again
    assert isinstance(stronger, Duplicate)
    a.batcher.add(stronger)
    assert a.staged() == [(1, 7), (2, 7)]
    real = a.outbox.commit_batch
    a.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    a.batcher.flush()
    a.outbox.commit_batch = real  # type: ignore[method-assign]
    assert a.metrics.commit_failed_readings.total() == 2 and not acks
    assert a.staged() == [(1, 7), (2, 7)] and a.batcher.close_deadline_s() == 1000.05 + 60.0
    assert isinstance(a.hear(frame(1, 7)), Duplicate)  # still accepted: heard again, not twice
    a.hear(frame(1, 8))
    clock.now_s += 0.05
    a.batcher.tick()  # staged after them
    assert a.staged() == [(1, 7), (2, 7), (1, 8)]
    a.batcher.flush()
    assert sorted(a.stored()) == [(1, 7), (1, 8), (2, 7)] and a.staged() == []
    for f in (9, 10, 11):  # the journal is written from its start again: over the old records
        a.hear(frame(1, f))
        a.hear(frame(2, f))
    clock.now_s += 0.05
    a.batcher.tick()
    b = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # the crash: a is gone
    assert sorted(b.stored()) == sorted([(1, 7), (1, 8), (2, 7)] + [(n, f) for n in (1, 2) for f in (9, 10, 11)])
    a.outbox.close()
    b.outbox.close()


def test_a_failed_commits_staged_frames_close_with_the_next_batch_and_a_serial_repeat_joins(
        tmp_path: Path, clock: Clock) -> None:
    """max_records 2: the second frame closes the batch, whose commit fails; the staged first
    frame stays open, a serial repeat of it is acked once the next commit returned, and that
    commit empties the journal although nothing new was staged."""
    a = Stack(tmp_path / "outbox.db", BatchConfig(max_records=2, max_age_s=60.0, durable_ms=50))
    a.hear(frame(1, 7))
    clock.now_s += 0.05
    a.batcher.tick()
    real = a.outbox.commit_batch
    a.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    a.hear(frame(2, 7))
    a.outbox.commit_batch = real  # type: ignore[method-assign]
    assert a.stored() == [] and a.staged() == [(1, 7)]
    acks: list[bytes] = []
    assert isinstance(a.hear(frame(1, 7), "serial", acks.append), Duplicate)
    assert not acks and a.batcher.close_deadline_s() == 1000.05 + BatchConfig().ack_max_delay_ms / 1000
    a.batcher.flush()
    assert a.stored() == [(1, 7)] and len(acks) == 1 and a.staged() == []
    a.outbox.close()


def _after_a_failed_commit(path: Path, clock: Clock, max_bytes: int) -> list[list[tuple[int, int]]]:
    """Three BLE frames staged, their commit failed, two more frames, the close: the packs,
    every frame received in the same second (the same bytes whatever max_bytes is)."""
    a = Stack(path, BatchConfig(max_records=1000, max_bytes=max_bytes, max_age_s=60.0, durable_ms=50))
    for n, f in ((1, 1), (2, 2), (1, 3)):
        v = a.verifier.process(Heard(frame(n, f), "ble", -70, None, received_s=1700000000.0))
        assert v is not None
        a.batcher.add(v)
        clock.now_s += 0.05
        a.batcher.tick()
    assert len(a.staged()) == 3
    real = a.outbox.commit_batch
    a.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    a.batcher.flush()
    a.outbox.commit_batch = real  # type: ignore[method-assign]
    for n, f in ((2, 4), (1, 5)):
        v = a.verifier.process(Heard(frame(n, f), "ble", -70, None, received_s=1700000000.0))
        assert v is not None
        a.batcher.add(v)
    a.batcher.flush()
    packs = [sorted((n, f) for n, f, _ in frames_from_pack(b.payload)) for b in a.outbox.peek(0, 100)]
    a.outbox.close()
    return packs


def test_the_batch_a_failed_commit_reopens_counts_its_bytes(tmp_path: Path, clock: Clock) -> None:
    """The reopened frames' bytes count as any frame's: a pack of exactly max_bytes is one
    pack, one byte less splits it before the last frame."""
    [whole] = _after_a_failed_commit(tmp_path / "big.db", clock, 100_000)
    assert whole == [(1, 1), (1, 3), (1, 5), (2, 2), (2, 4)]
    big = Outbox(tmp_path / "big.db", 1 << 26, Metrics())
    size = len(big.peek(0, 1)[0].payload)
    big.close()
    assert _after_a_failed_commit(tmp_path / "exact.db", clock, size) == [whole]
    assert _after_a_failed_commit(tmp_path / "less.db", clock, size - 1) == [
        [(1, 1), (1, 3), (2, 2), (2, 4)], [(1, 5)]]


def test_recovered_frames_keep_their_alarm_priority_and_their_marks_outlive_the_next_start(
        tmp_path: Path, clock: Clock) -> None:
    """A staged alarm makes the recovered batch an alarm batch (evicted last, sent first);
    ordinary frames alone an ordinary one. The recovery commits the nodes' marks with it: after
    one more crash the frames are still duplicates, stored once."""
    for name, ftypes, priority in (("mixed", (T_ALARM, 0), PRIORITY_ALARM), ("plain", (0, 0), PRIORITY_ORDINARY)):
        path = tmp_path / f"{name}.db"
        a = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
        for n, ftype in zip((1, 2), ftypes, strict=True):
            a.hear(frame(n, 7, ftype=ftype))
        clock.now_s += 0.05
        a.batcher.tick()
        b = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # a crashed
        assert [(x.priority, x.frames) for x in b.outbox.peek(0, 10)] == [(priority, 2)]
        c = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # b crashed too
        assert all(isinstance(c.hear(frame(n, 7, ftype=t)), Duplicate) for n, t in zip((1, 2), ftypes, strict=True))
        assert sorted(c.stored()) == [(1, 7), (2, 7)]
        for s in (a, b, c):
            s.outbox.close()


class _Restart:
    """The next start of a crashed Stack on ``path``, whose commits fail as ``fails`` says
    (one bool a commit, in order; the later ones succeed)."""

    def __init__(self, path: Path, fails: list[bool]) -> None:
        self.metrics = Metrics()
        self.outbox = Outbox(path, 1 << 26, self.metrics)
        real = self.outbox.commit_batch
        self.fails = fails

        def commit(*args: Any, **kwargs: Any) -> int:
            if self.fails and self.fails.pop(0):
                raise sqlite3.OperationalError("disk I/O error")
            return real(*args, **kwargs)

        self.outbox.commit_batch = commit  # type: ignore[method-assign]
        self.replay = ReplayTable(self.outbox.load_nodes())
        self.batcher = Batcher(BatchConfig(max_age_s=60.0), self.outbox, REGISTRY, self.replay,
                               Health(HealthConfig(), REGISTRY, lambda *a: None, 0.0), self.metrics)
        self.verifier = Verifier(REGISTRY, self.replay, self.metrics)

    def hear(self, data: bytes, transport: str = "ble", reply: Any = None) -> Any:
        v = self.verifier.process(Heard(data, transport, -70, reply))
        if v is not None:
            self.batcher.add(v)
        return v

    def packs(self) -> list[list[tuple[int, int]]]:
        return [[(n, f) for n, f, _ in frames_from_pack(b.payload)] for b in self.outbox.peek(0, 100)]


def _staged_then_crashed(path: Path, clock: Clock) -> Stack:
    a = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
    a.hear(frame(1, 7))
    clock.now_s += 0.05
    a.batcher.tick()
    assert a.staged() == [(1, 7)]
    return a


def test_frames_whose_recovery_failed_are_committed_before_the_next_batch(tmp_path: Path, clock: Clock) -> None:
    """The recovery's commit fails: the frames stay in the journal, their marks hold (a
    repeat is a duplicate, even after a failed commit rolled the node back), and the next
    batch's commit is preceded by theirs; after one more crash each is stored once."""
    path = tmp_path / "outbox.db"
    a = _staged_then_crashed(path, clock)
    b = _Restart(path, [True, True, True])  # the recovery; then a batch's retry and its own commit
    assert b.outbox.depth == 0
    assert isinstance(b.hear(frame(1, 7)), Duplicate)
    acks: list[bytes] = []
    b.hear(frame(1, 8), "serial", acks.append)
    b.batcher.flush()
    assert b.outbox.depth == 0 and not acks and b.fails == []
    assert isinstance(b.hear(frame(1, 7)), Duplicate)  # still waiting to be committed
    b.hear(frame(1, 8), "serial", acks.append)  # the retransmission
    b.batcher.flush()
    assert b.packs() == [[(1, 7)], [(1, 8)]] and len(acks) == 1
    c = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # b crashed
    assert c.stored() == [(1, 7), (1, 8)]
    for o in (a.outbox, b.outbox, c.outbox):
        o.close()


def test_no_commit_clears_the_journal_while_the_recovered_frames_wait(tmp_path: Path, clock: Clock) -> None:
    """The recovery fails, and its retry before the next batch too: that batch's staged
    frames are committed without clearing the journal, so a staging after it is written after
    the recovered frames, not over them, and a crash then loses nothing."""
    path = tmp_path / "outbox.db"
    a = _staged_then_crashed(path, clock)
    b = _Restart(path, [True, True])
    b.hear(frame(3, 1))
    b.batcher.stage()
    b.batcher.flush()
    assert b.packs() == [[(3, 1)]]
    b.hear(frame(3, 2))
    b.batcher.stage()
    c = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # b crashed
    assert sorted(c.stored()) == [(1, 7), (3, 1), (3, 2)] and c.staged() == []
    for o in (a.outbox, b.outbox, c.outbox):
        o.close()


def test_recovered_frames_committed_by_a_retry_leave_the_journal_to_the_batch(tmp_path: Path, clock: Clock) -> None:
    """The retry succeeds before a batch that staged nothing: the journal is not cleared by
    either (the recovered records in it are in a batch now: the next start skips them)."""
    path = tmp_path / "outbox.db"
    a = _staged_then_crashed(path, clock)
    b = _Restart(path, [True])
    for f in (1, 2):
        b.hear(frame(2, f), "serial", lambda ack: None)
        b.batcher.flush()
    assert b.packs() == [[(1, 7)], [(2, 1)], [(2, 2)]]  # recovered once
    c = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
    assert c.stored() == [(1, 7), (2, 1), (2, 2)]
    for o in (a.outbox, b.outbox, c.outbox):
        o.close()


def test_a_frame_whose_staging_failed_is_not_kept_when_its_commit_fails(tmp_path: Path, clock: Clock) -> None:
    """Not on disk (the staging write failed), then its batch's commit fails: lost to this
    gateway and counted, as the promise says; only frames on disk open the next batch."""
    a = Stack(tmp_path / "outbox.db", BatchConfig(max_age_s=60.0, durable_ms=50))
    a.outbox.stage = _broken_commit  # type: ignore[method-assign]
    a.hear(frame(1, 7))
    clock.now_s += 0.05
    a.batcher.tick()
    assert a.metrics.staging_commits.total() == 0
    real = a.outbox.commit_batch
    a.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    a.batcher.flush()
    a.outbox.commit_batch = real  # type: ignore[method-assign]
    assert a.metrics.commit_failed_readings.total() == 1 and a.batcher.deadline_s() is None
    a.batcher.flush()
    assert a.stored() == []
    a.outbox.close()


def test_a_retry_that_succeeds_before_a_failing_batch_leaves_its_staged_frames_in_the_journal(
        tmp_path: Path, clock: Clock) -> None:
    """The recovered frames are committed before a batch whose commit then fails: that commit
    must not have cleared the journal, where the batch's staged frame still is; stagings after
    it go after it, and a crash then keeps it."""
    path = tmp_path / "outbox.db"
    a = _staged_then_crashed(path, clock)
    b = _Restart(path, [True, False, True])  # the recovery fails, its retry works, the batch fails
    b.hear(frame(3, 1))
    b.batcher.stage()
    b.batcher.flush()
    assert b.packs() == [[(1, 7)]]
    for f in (2, 3, 4):
        b.hear(frame(3, f))
    b.batcher.stage()
    c = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # b crashed
    assert sorted(c.stored()) == [(1, 7), (3, 1), (3, 2), (3, 3), (3, 4)]
    for o in (a.outbox, b.outbox, c.outbox):
        o.close()


def test_a_retry_that_succeeds_lets_the_batch_after_it_clear_the_journal(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.db"
    a = _staged_then_crashed(path, clock)
    b = _Restart(path, [True])
    b.hear(frame(3, 1))
    b.batcher.stage()
    b.batcher.flush()
    assert b.packs() == [[(1, 7)], [(3, 1)]]
    assert b.outbox._staging.size == 0  # written from its start again, as after any batch
    c = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
    assert c.staged() == [] and sorted(c.stored()) == [(1, 7), (3, 1)]
    for o in (a.outbox, b.outbox, c.outbox):
        o.close()


def test_a_staged_frame_a_serial_repeat_joined_stays_in_the_journal_when_its_commit_fails(
        tmp_path: Path, clock: Clock) -> None:
    """A BLE frame staged, then its serial repeat joined it (the node waits for an ack): the
    failed commit does not reopen it (the node retransmits), and it stays in the journal: a
    batch that stages nothing leaves it there, and a crash before the retransmission keeps it."""
    path = tmp_path / "outbox.db"
    a = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))
    a.hear(frame(1, 7))
    clock.now_s += 0.05
    a.batcher.tick()
    acks: list[bytes] = []
    assert isinstance(a.hear(frame(1, 7), "serial", acks.append), Duplicate)
    real = a.outbox.commit_batch
    a.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    a.batcher.flush()
    a.outbox.commit_batch = real  # type: ignore[method-assign]
    assert a.batcher.deadline_s() is None and not acks
    a.hear(frame(2, 1), "serial", acks.append)
    a.batcher.flush()
    a.hear(frame(3, 1))
    clock.now_s += 0.05
    a.batcher.tick()
    b = Stack(path, BatchConfig(max_age_s=60.0, durable_ms=50))  # a crashed
    assert sorted(b.stored()) == [(1, 7), (2, 1), (3, 1)]
    a.outbox.close()
    b.outbox.close()
