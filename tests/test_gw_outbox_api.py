"""The outbox's promises at its own API (issue 18), each on a real file: batch ids that never
repeat, what start-up does with rows failing their CRC, downlinks, acks and their deferred
deletes (on a fake clock), peek's window, the marks log's fold, and what a close leaves."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

import gateway.outbox._marks as marks_mod
import gateway.outbox._outbox as outbox_mod
from gateway.errors import OutboxFull
from gateway.flow import NodeRow
from gateway.metrics import Metrics
from gateway.outbox import (
    ACK_FLUSH_COUNT,
    PRIORITY_ALARM,
    PRIORITY_ORDINARY,
    Outbox,
    StagedFrame,
    stored_bytes,
)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(outbox_mod.time, "monotonic", c)
    return c


def _ids_on_disk(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [i for (i,) in db.execute("SELECT id FROM batches ORDER BY id")]
    finally:
        db.close()


def _locked(ob: Outbox) -> sqlite3.Connection:
    """Another connection holding the write lock: the outbox's next write fails at once."""
    ob._db.execute("PRAGMA busy_timeout=0")
    other = sqlite3.connect(ob.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


# -- ids, start-up ------------------------------------------------------------------------------


def test_batch_ids_grow_past_every_row_left_across_restarts(tmp_path: Path) -> None:
    """The publisher sends in id order and resends a backlog by id: a new batch numbered below
    one still waiting would be skipped or sent out of order. (An emptied outbox may number
    from 1 again: gateway/jspublisher.py ``msg_id`` hashes the payload for that.)"""
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20)
    assert [ob.commit_batch(b"a%d" % i, 1, PRIORITY_ORDINARY) for i in range(3)] == [1, 2, 3]
    ob.ack(1)
    ob.ack(2)
    ob.close()
    ob = Outbox(path, 1 << 20)
    assert ob.pending_ids() == [3] and ob.commit_batch(b"b", 1, PRIORITY_ORDINARY) == 4
    ob.close()
    # A file of an older gateway: AUTOINCREMENT's counter is past every row left.
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.executescript(
        "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,"
        " frames INTEGER NOT NULL, created_s REAL NOT NULL, crc INTEGER NOT NULL, payload BLOB NOT NULL);")
    db.execute("INSERT INTO batches VALUES (40, 0, 1, 0, ?, ?)", (zlib.crc32(b"x"), b"x"))
    db.execute("UPDATE sqlite_sequence SET seq = 77 WHERE name = 'batches'")
    db.commit()
    db.close()
    ob = Outbox(old, 1 << 20)
    assert ob.pending_ids() == [40] and ob.commit_batch(b"y", 1, PRIORITY_ORDINARY) == 78
    ob.close()
    ob = Outbox(old, 1 << 20)
    assert ob.commit_batch(b"z", 1, PRIORITY_ORDINARY) == 79
    ob.close()


def test_start_up_deletes_rows_failing_their_crc_and_counts_what_remains(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20)
    ids = [ob.commit_batch(bytes([i]) * 300, 2, i % 2) for i in range(6)]
    ob.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE batches SET crc = crc + 1 WHERE id IN (?, ?)", (ids[1], ids[4]))
    db.commit()
    db.close()
    m = Metrics()
    ob = Outbox(path, 1 << 20, m)
    kept = [ids[0], ids[2], ids[3], ids[5]]
    assert ob.pending_ids() == kept and m.outbox_corrupt.total() == 2
    assert _ids_on_disk(path) == kept, "deleted, not only skipped"
    assert ob.bytes == 4 * stored_bytes(300) and m.outbox_bytes.get() == ob.bytes
    assert m.outbox_depth.get() == 4
    assert ob.commit_batch(b"n", 1, PRIORITY_ORDINARY) == ids[-1] + 1
    ob.close()


def test_a_file_from_before_the_replay_window_reads_with_strict_marks(tmp_path: Path) -> None:
    """Its ``recent`` column becomes ``seen`` with every bit set: no frame at or below the
    mark is taken as new, nothing captured before the upgrade gets in."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE nodes (node_id INTEGER PRIMARY KEY, fcnt INTEGER NOT NULL, "
                     "dcnt INTEGER NOT NULL, recent BLOB NOT NULL);"
                     "INSERT INTO nodes VALUES (7, 50, 2, x'');")
    db.close()
    ob = Outbox(path, 1 << 20)
    assert ob.load_nodes() == [NodeRow(7, 50, 2, b"\xff" * 8)]
    ob.close()
    ob = Outbox(path, 1 << 20)  # opened again: already upgraded, the marks as they are
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(8, 3, 0, b"\x01")])
    ob.close()
    assert Outbox(path, 1 << 20).load_nodes() == [NodeRow(7, 50, 2, b"\xff" * 8), NodeRow(8, 3, 0, b"\x01")]


# -- downlinks ---------------------------------------------------------------------------------


def test_downlinks_persist_are_replaced_and_go_with_the_batch_that_applied_them(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20)
    ob.put_downlink(3, '{"1": 1}')
    ob.put_downlink(3, '{"1": 2}')
    ob.put_downlink(4, '{"9": 0}')
    assert ob.load_downlinks() == {3: '{"1": 2}', 4: '{"9": 0}'}
    other = _locked(ob)
    with pytest.raises(sqlite3.OperationalError) as exc:  # locked, not full: no OutboxFull
        ob.put_downlink(5, "{}")
    assert not isinstance(exc.value, OutboxFull)
    with pytest.raises(sqlite3.OperationalError):  # a failed commit keeps the downlink
        ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, downlinks_done=[3])
    other.execute("ROLLBACK")
    other.close()
    assert ob.load_downlinks() == {3: '{"1": 2}', 4: '{"9": 0}'} and ob.depth == 0
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, downlinks_done=[3])
    ob.close()
    assert Outbox(path, 1 << 20).load_downlinks() == {4: '{"9": 0}'}


# -- commits: what changes, and when ----------------------------------------------------------


def test_a_commit_counts_notifies_and_stays_atomic(tmp_path: Path) -> None:
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", 1 << 20, m)
    seen: list[int] = []
    ob.add_listener(lambda: seen.append(ob.depth))
    a = ob.commit_batch(b"p" * 100, 7, PRIORITY_ALARM, [NodeRow(1, 10, 0, bytes(8))])
    assert seen == [1] and m.batches.total() == 1 and m.readings_committed.total() == 7
    assert m.outbox_depth.get() == 1 and m.outbox_bytes.get() == ob.bytes == stored_bytes(100)
    other = _locked(ob)
    with pytest.raises(sqlite3.OperationalError):
        ob.commit_batch(b"q" * 100, 3, PRIORITY_ORDINARY, [NodeRow(1, 11, 0, bytes(8))])
    other.execute("ROLLBACK")
    other.close()
    assert seen == [1] and m.batches.total() == 1 and m.readings_committed.total() == 7
    assert ob.pending_ids() == [a] and ob.load_nodes() == [NodeRow(1, 10, 0, bytes(8))]
    b = ob.commit_batch(b"q" * 100, 3, PRIORITY_ORDINARY, [NodeRow(1, 11, 0, bytes(8))])
    assert b == a + 1, "a failed commit uses up no id"
    got = ob.peek(0, 10)
    assert [(x.batch_id, x.priority, x.frames, x.payload) for x in got] == [
        (a, PRIORITY_ALARM, 7, b"p" * 100), (b, PRIORITY_ORDINARY, 3, b"q" * 100)]
    assert got[0].created_s <= got[1].created_s and got[0].created_s > 1.7e9
    ob.close()


def test_unstage_empties_the_journal_only_once_the_batch_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20)
    staged = [StagedFrame(5, 1, 0, 1, b"r1"), StagedFrame(5, 2, 0, 1, b"r2")]
    ob.stage(staged)
    ob.commit_batch(b"x", 2, PRIORITY_ORDINARY, [NodeRow(5, 2, 0, bytes(8))])  # not unstage
    ob.stage([StagedFrame(6, 1, 0, 1, b"s1")])
    ob.commit_batch(b"y", 3, PRIORITY_ORDINARY, [NodeRow(6, 1, 0, bytes(8))], unstage=True)
    ob.stage([StagedFrame(7, 9, 1, 2, b"t9")])
    ob.close()
    ob = Outbox(path, 1 << 20)
    # The newest staging at the start, then records of committed batches the reset left.
    assert ob.load_staged()[0] == StagedFrame(7, 9, 1, 2, b"t9")
    assert ob.load_staged()[1:] == [StagedFrame(5, 2, 0, 1, b"r2"), StagedFrame(6, 1, 0, 1, b"s1")]
    ob.close()


# -- acks: delete only what was PUBACKed, few writes ---------------------------------------------


def test_acks_are_deleted_once_the_oldest_waited_ack_flush_s(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20, ack_flush_s=30.0)
    ids = [ob.commit_batch(b"b%d" % i, 1, PRIORITY_ORDINARY) for i in range(6)]
    ob.ack(ids[0])
    clock.now += 20
    ob.ack(ids[1])  # not the oldest: the age is the first delete's
    ob.ack(ids[1])
    ob.ack(999)  # not waiting: nothing
    clock.now += 9.9
    ob.flush_acks()
    assert _ids_on_disk(path) == ids
    clock.now += 0.1
    ob.flush_acks()
    assert _ids_on_disk(path) == ids[2:] and ob.pending_ids() == ids[2:]
    # The next delete's age starts at its own ack.
    clock.now += 100
    ob.ack(ids[2])
    clock.now += 29
    ob.flush_acks()
    assert _ids_on_disk(path) == ids[2:]
    ob.flush_acks(force=True)
    assert _ids_on_disk(path) == ids[3:]
    ob.close()


def test_acked_rows_wait_until_ack_flush_count_and_a_failed_flush_is_retried(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 30, ack_flush_s=1e9, synchronous="normal")
    ids = [ob.commit_batch(b"b%d" % i, 1, PRIORITY_ORDINARY) for i in range(ACK_FLUSH_COUNT + 2)]
    for b in ids[: ACK_FLUSH_COUNT - 1]:
        ob.ack(b)
    ob.flush_acks()
    assert len(_ids_on_disk(path)) == len(ids)
    ob.ack(ids[ACK_FLUSH_COUNT - 1])
    other = _locked(ob)
    ob.flush_acks()  # the delete fails: kept, a later flush retries
    other.execute("ROLLBACK")
    other.close()
    assert len(_ids_on_disk(path)) == len(ids)
    ob.flush_acks()
    assert _ids_on_disk(path) == ids[ACK_FLUSH_COUNT:]
    ob.close()


def test_an_ack_frees_its_bytes_for_new_batches(tmp_path: Path) -> None:
    m = Metrics()
    size = stored_bytes(1000)
    ob = Outbox(tmp_path / "o.db", 3 * size, m)
    ids = [ob.commit_batch(bytes([i]) * 1000, 1, PRIORITY_ORDINARY) for i in range(3)]
    ob.ack(ids[0])
    ob.ack(ids[0])
    assert ob.bytes == 2 * size and m.outbox_bytes.get() == 2 * size and m.outbox_depth.get() == 2
    ob.commit_batch(b"\xff" * 1000, 1, PRIORITY_ORDINARY)
    assert m.outbox_dropped_batches.total() == 0 and ob.bytes == 3 * size
    ob.commit_batch(b"\xfe" * 1000, 4, PRIORITY_ORDINARY)
    assert m.outbox_dropped_batches.get("ordinary") == 1 and m.outbox_dropped_readings.total() == 1
    assert ids[1] not in ob.pending_ids() and ob.bytes == 3 * size
    ob.close()


# -- peek -----------------------------------------------------------------------------------------


def test_peek_returns_limit_batches_after_an_id_and_drops_corrupt_ones(tmp_path: Path) -> None:
    m = Metrics()
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20, m)
    ids = [ob.commit_batch(b"b%d" % i, 1, PRIORITY_ORDINARY) for i in range(10)]
    assert [b.batch_id for b in ob.peek(0, 4)] == ids[:4]
    assert [b.batch_id for b in ob.peek(ids[3], 4)] == ids[4:8]
    assert [b.batch_id for b in ob.peek(ids[7], 4)] == ids[8:]
    assert ob.peek(ids[-1], 4) == [] and ob.peek(0, 0) == []
    ob._db.execute("UPDATE batches SET payload = x'00' WHERE id = ?", (ids[1],))
    assert [b.batch_id for b in ob.peek(0, 3)] == [ids[0], ids[2], ids[3]]
    assert m.outbox_corrupt.total() == 1 and ids[1] not in ob.pending_ids()
    ob.close()
    assert ids[1] not in _ids_on_disk(path), "the corrupt row went with the close's flush"


# -- the marks log -----------------------------------------------------------------------------


def _log_rows(ob: Outbox) -> int:
    return int(ob._db.execute("SELECT count(*) FROM marks").fetchone()[0])


def _table(ob: Outbox) -> list[tuple[int, int]]:
    return list(ob._db.execute("SELECT node_id, fcnt FROM nodes ORDER BY node_id"))


def test_the_marks_log_folds_at_its_threshold_and_at_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log stays below max(FOLD_MIN_ROWS, FOLD_PER_NODE x nodes) rows after every commit:
    bounded disk; every mark reads back the same before and after a fold."""
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 6)
    monkeypatch.setattr(marks_mod, "FOLD_PER_NODE", 2)
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20)
    for f in range(1, 6):  # 5 rows logged: below 6
        ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(1, f, 0, bytes(8))])
    assert _log_rows(ob) == 5 and _table(ob) == []
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY)  # no node rows: no log row, no fold
    assert _log_rows(ob) == 5
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(1, 6, 0, bytes(8))])  # the 6th: folds
    assert _log_rows(ob) == 0 and _table(ob) == [(1, 6)]
    rows = [NodeRow(n, 100 + n, 1, bytes(8)) for n in range(2, 6)]  # 4 more nodes: 5 in the table
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, rows)
    assert _log_rows(ob) == 1 and ob.load_nodes() == [NodeRow(1, 6, 0, bytes(8)), *rows]
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(2, 200, 1, bytes(8))])  # 5 rows: no fold
    assert _log_rows(ob) == 2 and _table(ob) == [(1, 6)]
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(3, 300, 1, bytes(8))])  # 6: folds
    assert _log_rows(ob) == 0 and _table(ob) == [(1, 6), (2, 200), (3, 300), (4, 104), (5, 105)]
    # Now 5 nodes: the threshold is 2 x 5 = 10 rows.
    for f in range(9):
        ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(4, 400 + f, 0, bytes(8))])
    assert _log_rows(ob) == 9
    ob.close()
    ob = Outbox(path, 1 << 20)
    assert _log_rows(ob) == 0 and dict(_table(ob))[4] == 408, "the close folded the log"
    ob.close()


def test_a_reopened_log_counts_its_rows_towards_the_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 4)
    monkeypatch.setattr(marks_mod, "FOLD_PER_NODE", 1)
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20)
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(1, 1, 0, bytes(8)), NodeRow(2, 1, 0, bytes(8))])
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(1, 2, 0, bytes(8))])
    ob._db.close()  # a kill: no close, no fold
    ob._staging.close()
    ob = Outbox(path, 1 << 20)
    assert ob._marks.rows == 3 and _log_rows(ob) == 2
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(2, 2, 0, bytes(8))])
    assert _log_rows(ob) == 0 and _table(ob) == [(1, 2), (2, 2)]
    ob.close()


def test_a_close_leaves_a_checkpointed_file_with_every_delete(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 20, ack_flush_s=1e9)
    ids = [ob.commit_batch(b"b%d" % i, 1, PRIORITY_ORDINARY, [NodeRow(1, i, 0, bytes(8))]) for i in range(5)]
    ob.ack(ids[0])
    ob.ack(ids[3])
    reader = sqlite3.connect(path)  # an operator's sqlite3 shell: the close is not the last one
    reader.execute("SELECT count(*) FROM batches").fetchone()
    ob.close()
    assert Path(str(path) + "-wal").stat().st_size == 0, "the WAL is checkpointed and truncated"
    assert [i for (i,) in reader.execute("SELECT id FROM batches ORDER BY id")] == [ids[1], ids[2], ids[4]]
    assert reader.execute("SELECT count(*) FROM marks").fetchone()[0] == 0
    assert reader.execute("SELECT node_id, fcnt FROM nodes").fetchall() == [(1, 4)]
    reader.close()
