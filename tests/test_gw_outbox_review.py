"""Corners of the outbox found by its mutation review (issue 18, bench/mutation-equivalents.md):
each test here failed with one surviving mutant of gateway/outbox/*.py."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
import zlib
from pathlib import Path

import pytest

import gateway.outbox._marks as marks_mod
import gateway.outbox._outbox as outbox_mod
from gateway.errors import OutboxFull
from gateway.flow import NodeRow
from gateway.metrics import Metrics
from gateway.outbox import Outbox, stored_bytes
from gateway.outbox._deflate import MIN_DEFLATE_BYTES, store_marks
from gateway.outbox._marks import MARK, unpack_marks
from gateway.outbox._pending import PRIORITY_ALARM, PRIORITY_ORDINARY, Pending
from gateway.outbox._salvage import _DamagedTable
from gateway.outbox._sqlite import connect, write
from tests.test_gw_outbox_salvage import PAGE, _leaves, _readable, _smash, _table_file


def test_after_a_squeeze_an_alarm_at_the_front_is_still_evicted_last() -> None:
    """The squeeze resets where each priority's search starts: an alarm that becomes the
    first row must still be found (else a full outbox would evict nothing for it)."""
    p = Pending()
    for i in range(1, 3001):
        p.append(i, 100, PRIORITY_ALARM if i in (1502, 2000) else PRIORITY_ORDINARY, 1)
    for i in range(1, 1502):
        p.remove(i)
    assert p.ids[0] == 1502, "squeezed: the alarm is the first row"
    everything = p.oldest(1 << 40)
    assert everything[-2:] == [1502, 2000] and len(everything) == 1499
    assert p.oldest(100 * 1497) == [i for i in range(1503, 3001) if i != 2000]


@pytest.mark.timeout(20)  # a float slipped into the bisection never converges up there
def test_a_damaged_table_with_rowids_beyond_float_precision_reads_every_readable_row(tmp_path: Path) -> None:
    """Rowids above 2**53 (SQLite allows up to 2**63 - 1): the probes after a bad page are
    integer arithmetic, exact at any rowid."""
    rng = random.Random(53)
    rowids = sorted(rng.sample(range(1 << 62, (1 << 62) + (1 << 58)), 1200))
    path = tmp_path / "t.db"
    _table_file(path, rowids)
    leaves = _leaves(path, "t")
    _smash(path, sorted(rng.sample(leaves, len(leaves) // 4)), PAGE)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    want = _readable(db, "t", rowids)
    assert 0 < len(want) < len(rowids)
    assert [x for (x,) in _DamagedTable(db, "t", "x")] == [bytes([r % 251]) * 90 for r in want]
    db.close()


def test_a_marks_row_that_inflates_to_a_torn_tail_gives_its_whole_rows(tmp_path: Path) -> None:
    """A deflated marks row whose content ends in part of a row (damage that still inflates):
    the whole rows are read, the tail ignored, and the outbox opens."""
    rows = MARK.pack(1, 10, 0, 8, bytes(8)) + MARK.pack(2, 20, 1, 1, b"\x01" + bytes(7))
    co = zlib.compressobj(1, zlib.DEFLATED, 12, 5)
    blob = co.compress(rows + b"\x07\x07\x07") + co.flush()
    assert len(blob) % MARK.size
    assert unpack_marks(blob) == [(1, 10, 0, bytes(8)), (2, 20, 1, b"\x01")]
    path = tmp_path / "o.db"
    Outbox(path, 1 << 20).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO marks (rows) VALUES (?)", (blob,))
    db.commit()
    db.close()
    ob = Outbox(path, 1 << 20)
    assert ob.load_nodes() == [NodeRow(1, 10, 0, bytes(8)), NodeRow(2, 20, 1, b"\x01")]
    ob.close()


def test_the_squeeze_starts_past_1024_dead_rows_even_with_few_living() -> None:
    p = Pending()
    for i in range(1, 1031):
        p.append(i, 100, PRIORITY_ORDINARY, 1)
    for i in range(1, 1025):
        p.remove(i)
    assert len(p.ids) == 1030, "1024 dead: not yet"
    p.remove(1025)
    assert list(p.ids) == [1026, 1027, 1028, 1029, 1030] and p.after(0, 9) == list(p.ids)


def test_a_deflated_marks_row_that_would_look_raw_gets_one_zero_byte() -> None:
    """One byte, not more: the row is written twice (WAL, checkpoint) at every commit."""
    for n in range(MIN_DEFLATE_BYTES // MARK.size + 1, 3000):
        rows = b"".join(MARK.pack(0x1000 + i, 7 * i, i % 5, 8, (i * 0x0101).to_bytes(8, "little")) for i in range(n))
        co = zlib.compressobj(1, zlib.DEFLATED, 12, 5)
        z = co.compress(rows) + co.flush()
        if len(z) % MARK.size == 0:
            break
    assert store_marks(rows, MARK.size) == z + b"\0"


def test_a_commits_marks_row_is_stored_deflated(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1 << 20)
    rows = [NodeRow(0x10000000 + n, 5000 + n, 3, b"\xff" * 8) for n in range(100)]
    ob.commit_batch(b"x", 100, PRIORITY_ORDINARY, rows)
    (n,) = ob._db.execute("SELECT length(rows) FROM marks").fetchone()
    assert n < 100 * MARK.size / 3 and sorted(ob.load_nodes()) == rows
    ob.close()


def test_a_log_found_over_its_threshold_folds_at_the_next_commit_with_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit without node rows neither folds nor forgets the rows the log holds (a log
    written under a higher threshold, by an older gateway)."""
    path = tmp_path / "o.db"
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 100)
    ob = Outbox(path, 1 << 20)
    for f in range(10):
        ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(1, f, 0, bytes(8))])
    ob._db.close()  # a kill: no fold
    ob._staging.close()
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 4)
    ob = Outbox(path, 1 << 20)
    ob.commit_batch(b"y", 1, PRIORITY_ORDINARY)
    ob.commit_batch(b"z", 1, PRIORITY_ORDINARY, [NodeRow(1, 10, 0, bytes(8))])
    assert ob._db.execute("SELECT count(*) FROM marks").fetchone()[0] == 0
    assert ob._db.execute("SELECT fcnt FROM nodes").fetchall() == [(10,)]
    ob.close()


def test_an_evicted_alarm_batch_is_counted_as_alarm(tmp_path: Path) -> None:
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", 2 * stored_bytes(300), m)
    ob.commit_batch(b"a" * 300, 2, PRIORITY_ALARM)
    ob.commit_batch(b"b" * 300, 3, PRIORITY_ALARM)
    ob.commit_batch(b"c" * 300, 4, PRIORITY_ALARM)
    assert m.outbox_dropped_batches.get("alarm") == 1 and m.outbox_dropped_batches.get("ordinary") == 0
    assert m.outbox_dropped_readings.total() == 2
    ob.close()


def _no_more_pages(ob: Outbox) -> None:
    (pages,) = ob._db.execute("PRAGMA page_count").fetchone()
    ob._db.execute(f"PRAGMA max_page_count={pages}")


def test_a_full_disk_frees_twice_the_batch_and_two_pages_from_the_oldest(tmp_path: Path) -> None:
    """SQLITE_FULL before max_bytes: the retry evicts the oldest batches worth 2 x this batch
    + 2 pages (one page each here: 4 batches), not fewer (it would fail again on the next
    commit) nor more (readings dropped for nothing)."""
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", 1 << 30, m)
    ids = [ob.commit_batch(random.Random(i).randbytes(2100), 1, PRIORITY_ORDINARY) for i in range(20)]
    assert stored_bytes(2100) == 4096
    _no_more_pages(ob)
    new = ob.commit_batch(random.Random(99).randbytes(2100), 1, PRIORITY_ORDINARY)
    assert m.outbox_dropped_batches.get("ordinary") == 4 and ob.pending_ids() == [*ids[4:], new]
    ob.close()


def test_a_full_disk_with_nothing_to_evict_refuses_the_batch_with_its_frames(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1 << 30)
    _no_more_pages(ob)
    with pytest.raises(OutboxFull) as exc:
        ob.commit_batch(random.Random(1).randbytes(10_000), 9, PRIORITY_ORDINARY, [NodeRow(1, 1, 0, bytes(8))])
    assert exc.value.frames == 9 and ob.depth == 0 and ob.load_nodes() == []
    ob.close()


def test_a_transaction_that_writes_nothing_counts_no_disk_bytes(tmp_path: Path) -> None:
    m = Metrics()
    db = connect(tmp_path / "o.db", "full", None)
    write(db, lambda: db.execute("SELECT 1"), m)
    assert m.disk_bytes_written.total() == 0
    db.close()


def test_an_outbox_opened_with_defaults_fsyncs_and_flushes_acks_after_30_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(outbox_mod.time, "monotonic", lambda: now[0])
    ob = Outbox(tmp_path / "deep" / "er" / "o.db", 1 << 20)  # its directories made
    assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2 and ob._staging._sync
    assert ob.salvage.moved_to is None and not ob.salvage.failed
    assert (tmp_path / "deep" / "er" / "o.db-staged").exists()
    b = ob.commit_batch(b"x", 1, PRIORITY_ORDINARY)
    ob.ack(b)
    now[0] += 29.9
    ob.flush_acks()
    assert ob._db.execute("SELECT count(*) FROM batches").fetchone()[0] == 1
    now[0] += 0.2
    ob.flush_acks()
    assert ob._db.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    ob.close()


def test_a_reopened_outbox_still_evicts_ordinary_batches_before_alarms(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 3 * stored_bytes(300))
    alarm = ob.commit_batch(b"a" * 300, 1, PRIORITY_ALARM)
    ordinary = ob.commit_batch(b"o" * 300, 1, PRIORITY_ORDINARY)
    ob.close()
    m = Metrics()
    ob = Outbox(path, 3 * stored_bytes(300), m)
    ob.commit_batch(b"n" * 300, 1, PRIORITY_ORDINARY)
    ob.commit_batch(b"m" * 300, 1, PRIORITY_ORDINARY)
    assert alarm in ob.pending_ids() and ordinary not in ob.pending_ids()
    assert m.outbox_dropped_batches.get("ordinary") == 1
    ob.close()


def test_an_older_autoincrement_file_with_no_batch_yet_opens_and_numbers_from_1(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,"
        " frames INTEGER NOT NULL, created_s REAL NOT NULL, crc INTEGER NOT NULL, payload BLOB NOT NULL);")
    db.close()
    ob = Outbox(path, 1 << 20)
    assert ob.commit_batch(b"x", 1, PRIORITY_ORDINARY) == 1
    ob.close()


def test_small_pages_count_small_page_bytes(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1 << 20, page_size=512)
    ob.commit_batch(random.Random(5).randbytes(700), 1, PRIORITY_ORDINARY)
    assert ob.bytes == stored_bytes(700, 512) != stored_bytes(700)
    ob.close()


def test_the_staging_journal_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Outbox(tmp_path / "o.db", 1 << 20).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.db-staged").stat().st_mode) == 0o600


def test_a_commit_counts_about_what_it_wrote(tmp_path: Path) -> None:
    m = Metrics()
    db = connect(tmp_path / "o.db", "full", None)
    write(db, lambda: db.execute("INSERT INTO downlinks VALUES (2, ?)", ("x" * 5000,)), m)
    assert 5000 <= m.disk_bytes_written.total() < 64 << 10
    db.close()


def test_one_byte_over_max_bytes_evicts() -> None:
    p = Pending()
    p.append(1, 100, PRIORITY_ORDINARY, 1)
    p.append(2, 100, PRIORITY_ORDINARY, 1)
    assert p.oldest(1) == [1] and p.oldest(0) == []


def test_the_file_made_after_a_move_aside_keeps_the_configured_settings(tmp_path: Path) -> None:
    """synchronous FULL (fsync as configured) and the configured page size, for the new file
    too."""
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 300)
    ob = Outbox(path, 1 << 20, synchronous="full", page_size=512)
    assert ob.salvage.moved_to is not None
    assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2 and ob._page_size == 512
    ob.close()


@pytest.mark.parametrize("smashed", [[0, 1], list(range(10, 130))])
def test_the_probes_past_a_bad_stretch_find_the_next_readable_row(tmp_path: Path, smashed: list[int]) -> None:
    """Two bad one-row pages (the bisection's last step), and a stretch longer than the probes
    at the rows' spacing (then doubling takes over)."""
    rowids = list(range(0, 300)) if smashed == [0, 1] else list(range(0, 1500))
    size = 300 if smashed == [0, 1] else 90
    path = tmp_path / "t.db"
    _table_file(path, rowids, size)
    leaves = _leaves(path, "t")
    _smash(path, [leaves[i] for i in smashed], PAGE)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    want = _readable(db, "t", rowids)
    assert 0 < len(want) < len(rowids) and want[-1] == rowids[-1]
    assert [x for (x,) in _DamagedTable(db, "t", "x")] == [bytes([r % 251]) * size for r in want]
    db.close()


def test_stored_bytes_are_whole_bytes_and_default_to_sqlites_page() -> None:
    """An int (the outbox_bytes gauge, max_bytes arithmetic), for rows that fit a leaf and
    rows that spill; the default page is SQLite's 4096."""
    for size in (10, 300, 1000, 5000, 20_000):
        for page in (512, 4096):
            assert type(stored_bytes(size, page)) is int
        assert stored_bytes(size) == stored_bytes(size, 4096)


def test_the_outbox_can_be_used_from_another_thread(tmp_path: Path) -> None:
    """The connection is not tied to the thread that opened it (check_same_thread=False): a
    caller may close or use it from another thread, one at a time."""
    ob = Outbox(tmp_path / "o.db", 1 << 20)
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(ob.commit_batch(b"x", 1, PRIORITY_ORDINARY)))
    t.start()
    t.join(timeout=30)
    assert out == [1] and ob.pending_ids() == [1]
    ob.close()
