"""A damaged outbox file (issue 18): what the salvage copies out of it, what it refuses, and
that a bad page costs exactly its own rows. The truth for "readable" is SQLite's own: a row
is readable when a lookup by its rowid returns it from the damaged file."""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import sqlite3
import zlib
from pathlib import Path

import pytest

import gateway.outbox._marks as marks_mod
import gateway.outbox._salvage as salvage_mod
from gateway.flow import NodeRow
from gateway.metrics import Metrics
from gateway.outbox import PRIORITY_ORDINARY, Outbox
from gateway.outbox._salvage import _DamagedTable, salvage
from gateway.outbox._sqlite import connect

PAGE = 512


def _leaves(path: Path, table: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [p for (p,) in db.execute(
            "SELECT pageno FROM dbstat WHERE name=? AND pagetype='leaf' ORDER BY pageno", (table,))]
    finally:
        db.close()


def _smash(path: Path, pages: list[int], page_size: int) -> None:
    with path.open("r+b") as f:
        for p in pages:
            f.seek((p - 1) * page_size)
            f.write(b"\xee" * 64)


def _readable(db: sqlite3.Connection, table: str, rowids: list[int]) -> list[int]:
    out = []
    for r in rowids:
        try:
            if db.execute(f"SELECT rowid FROM {table} WHERE rowid = ?", (r,)).fetchone():
                out.append(r)
        except sqlite3.DatabaseError:
            pass
    return out


def _runs(all_ids: list[int], kept: list[int]) -> int:
    """Maximal stretches of consecutive rows (in rowid order) lost."""
    keep = set(kept)
    runs, inside = 0, False
    for r in all_ids:
        if r in keep:
            inside = False
        elif not inside:
            runs, inside = runs + 1, True
    return runs


def _table_file(path: Path, rowids: list[int], size: int = 90) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA page_size={PAGE}")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE t (x BLOB)")
    db.executemany("INSERT INTO t (rowid, x) VALUES (?, ?)", [(r, bytes([r % 251]) * size) for r in rowids])
    db.commit()
    db.close()


_PATTERNS = {
    "one": lambda ls: [ls[len(ls) // 2]],
    "first": lambda ls: [ls[0]],
    "last": lambda ls: [ls[-1]],
    "last_three": lambda ls: ls[-3:],
    "two_apart": lambda ls: [ls[5], ls[9]],
    "run_of_nine": lambda ls: ls[10:19],
    "every_third": lambda ls: ls[1::3],
    "random": lambda ls: sorted(random.Random(7).sample(ls, len(ls) // 4)),
}


@pytest.mark.parametrize("pattern", sorted(_PATTERNS))
@pytest.mark.parametrize("ids", ["dense", "sparse", "far", "one_a_page"])
def test_a_damaged_table_yields_every_readable_row_and_counts_the_stretches(
    tmp_path: Path, pattern: str, ids: str,
) -> None:
    """Rows from 0 (a node id may be 0) to far apart ones (gaps that the doubling crosses),
    ids far from 0 (node ids), pages of one row each; whatever the bad pages, every row
    SQLite can still read is read, in order, and only those; ``bad`` is the number of
    stretches lost; a bad page costs a bounded number of queries."""
    rng = random.Random(ids)
    size = 90
    if ids in ("dense", "one_a_page"):
        rowids = list(range(0, 1500 if ids == "dense" else 600))
        size = 90 if ids == "dense" else 300
    elif ids == "sparse":
        rowids = [0, *sorted(rng.sample(range(1, 1 << 40), 1499))]
    else:
        rowids = sorted(rng.sample(range(0x10000000, 0x10000000 + (1 << 22)), 1500))
    path = tmp_path / "t.db"
    _table_file(path, rowids, size)
    leaves = _leaves(path, "t")
    assert len(leaves) > 200
    _smash(path, _PATTERNS[pattern](leaves), PAGE)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    want = _readable(db, "t", rowids)
    assert 0 < len(want) < len(rowids)
    queries: list[str] = []
    db.set_trace_callback(queries.append)
    table = _DamagedTable(db, "t", "x")
    got = list(table)
    db.set_trace_callback(None)
    assert [bytes([r % 251]) * size for r in want] == [x for (x,) in got]
    assert table.read == len(want) and table.bad == _runs(rowids, want)
    # Per stretch: 64 rows read one by one, ~2 probes a row lost, a bisection; a table bad to
    # its end: 512 probes at the rows' spacing, then doubling.
    bound = 600 + 200 * table.bad + 2 * (len(rowids) - len(want))
    assert len(queries) <= bound, f"{len(queries)} queries for {table.bad} stretches"
    db.close()


def test_the_largest_rowid_there_can_be_is_reached_past_a_bad_page(tmp_path: Path) -> None:
    """Doubling from the failed rowid stops at the largest rowid SQLite allows, not short of it."""
    top = (1 << 63) - 1
    rowids = list(range(1, 400)) + list(range(top - 40, top + 1))
    path = tmp_path / "t.db"
    _table_file(path, rowids)
    _smash(path, _leaves(path, "t")[-10:-1], PAGE)  # the top rows' pages but the last
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    want = _readable(db, "t", rowids)
    assert top in want and top - 20 not in want and 399 in want
    table = _DamagedTable(db, "t", "x")
    assert [x for (x,) in table] == [bytes([r % 251]) * 90 for r in want]
    db.close()


# -- salvage: what is copied, what is refused ------------------------------------------------------


def _damaged_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[NodeRow], dict[int, bytes]]:
    """An outbox stopped by a kill (the marks log not folded), then its batch pages damaged.
    Node 1's newest mark is in the log only, its older one in the table; node 0 too."""
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 40)
    monkeypatch.setattr(marks_mod, "FOLD_PER_NODE", 1)
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 24)
    payloads = {}
    for i in range(60):
        rows = [NodeRow(n, 1000 * n + i, i, i.to_bytes(8, "little")) for n in range(0, 5)] if i < 50 else \
               [NodeRow(1, 5000 + i, i, bytes(8)), NodeRow(0, 7000 + i, 0, b"\x01")]
        p = random.Random(i).randbytes(3000)
        payloads[ob.commit_batch(p, 3, PRIORITY_ORDINARY, rows)] = p
    ob.put_downlink(9, '{"2": 1}')
    assert ob._db.execute("SELECT count(*) FROM marks").fetchone()[0] > 0
    ob._db.close()  # a kill: the log stays as it is
    ob._staging.close()
    want = [NodeRow(0, 7059, 0, b"\x01"), NodeRow(1, 5059, 59, bytes(8))] + [
        NodeRow(n, 1000 * n + 49, 49, (49).to_bytes(8, "little")) for n in range(2, 5)]
    db = sqlite3.connect(path)
    db.execute("INSERT INTO downlinks VALUES (10, x'00ff')")  # not text: refused
    db.commit()
    db.close()
    leaves = _leaves(path, "batches")
    _smash(path, leaves[::4], 4096)
    return path, want, payloads


def test_salvage_takes_the_newest_marks_from_the_log_and_the_clean_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    path, want, payloads = _damaged_outbox(tmp_path, monkeypatch)
    monkeypatch.setattr(salvage_mod, "_SALVAGE_CHUNK_BYTES", 3000 * 7)  # several transactions
    m = Metrics()
    ob = Outbox(path, 1 << 24, m)
    s = ob.salvage
    assert s.moved_to is not None and not s.failed
    assert ob.load_nodes() == want
    assert ob.load_downlinks() == {9: '{"2": 1}'} and s.downlinks == 1
    kept = ob.peek(0, 1000)
    assert 30 <= len(kept) < 60 and s.batches == len(kept) and s.nodes == 5
    assert all(b.payload == payloads[b.batch_id] and b.frames == 3 for b in kept)
    assert not [r for r in caplog.records if "salvage_nodes_partial" in r.getMessage()
                or "salvage_marks_failed" in r.getMessage()], "no false alarm"
    ob.close()


def test_salvage_refuses_garbage_marks_and_counts_bad_batches_one_by_one(tmp_path: Path) -> None:
    """A garbage mark could lock a node out for good; a batch row with a bad CRC or ids of
    the wrong type is not published. Each field of a mark is checked on its own."""
    old = tmp_path / "old.db"
    db = connect(old, "full", None)
    good = [(0, 0, 0, b""), (0xFFFFFFFF, 0xFFFFFFFF, 1 << 40, bytes(8)), (5, 6, 7, b"\x01")]
    bad = [(1 << 32, 1, 0, b""), (11, -1, 0, b""), (12, 1 << 32, 0, b""), (13, "x7", 0, b""),
           (14, 1.5, 0, b""), (15, 1, -1, b""), (16, 1, "zero", b""), (17, 1, 0, bytes(9)),
           (18, 1, 0, "ab")]
    db.executemany("INSERT INTO nodes VALUES (?,?,?,?)", good + bad)
    p = b"pack"
    rows = [(1, 0, 2, 0.0, zlib.crc32(p), p), (2, 0, 2, 0.0, zlib.crc32(p) + 1, p),
            (3, 0, "two", 0.0, zlib.crc32(p), p), (4, 1, 2, 0.0, zlib.crc32(p), p),
            (5, 0, 2, 0.0, zlib.crc32(p), b"other"), (6, "x", 2, 0.0, zlib.crc32(p), p)]
    db.executemany("INSERT INTO batches VALUES (?,?,?,?,?,?)", rows)
    db.close()
    m = Metrics()
    new = connect(tmp_path / "new.db", "full", None)
    s = salvage(old, new, m)
    assert sorted(new.execute("SELECT * FROM nodes")) == sorted(good) and s.nodes == 3
    # A damaged priority costs the eviction order, not the readings: kept.
    assert [r[0] for r in new.execute("SELECT id FROM batches ORDER BY id")] == [1, 4, 6] and s.batches == 3
    assert m.outbox_corrupt.total() == 3
    new.close()


def test_the_moved_aside_file_is_read_only_left_as_it_was(tmp_path: Path) -> None:
    """Kept for forensics: a read-write connection would checkpoint its WAL into it and delete
    the WAL. A file left by a kill (its WAL holding the last commits) is copied as is."""
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 24)
    for i in range(10):
        ob.commit_batch(random.Random(i).randbytes(2000), 1, PRIORITY_ORDINARY, [NodeRow(3, i, 0, bytes(8))])
    aside = tmp_path / "aside.db"
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(str(path) + suffix, str(aside) + suffix)
    ob.close()
    before = {s: hashlib.sha256(Path(str(aside) + s).read_bytes()).hexdigest() for s in ("", "-wal")}
    new = connect(tmp_path / "new.db", "full", None)
    s = salvage(aside, new, Metrics())
    assert s.batches == 10 and s.nodes == 1 and not s.failed
    assert {x: hashlib.sha256(Path(str(aside) + x).read_bytes()).hexdigest() for x in ("", "-wal")} == before
    new.close()


@pytest.mark.parametrize("case", ["nodes_unreadable_log_readable", "nodes_partly_readable", "nothing"])
def test_salvage_fails_only_when_no_mark_at_all_could_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, case: str,
) -> None:
    monkeypatch.setattr(marks_mod, "FOLD_MIN_ROWS", 10**6)
    path = tmp_path / "o.db"
    ob = Outbox(path, 1 << 24, page_size=PAGE)
    rows = [NodeRow(n, n, 0, bytes(8)) for n in range(1, 400)]
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, rows)
    ob._marks.fold()  # into the table, outside a batch: a test's shortcut
    if case == "nodes_unreadable_log_readable":
        ob.commit_batch(b"y", 1, PRIORITY_ORDINARY, [NodeRow(500, 9, 0, bytes(8))])
    ob._db.close()
    ob._staging.close()
    leaves = _leaves(path, "nodes")
    assert len(leaves) > 5
    _smash(path, leaves if case != "nodes_partly_readable" else leaves[2:3], PAGE)
    ob = Outbox(path, 1 << 24)
    failed = case == "nothing"
    assert ob.salvage.failed is failed
    got = ob.load_nodes()
    if case == "nodes_unreadable_log_readable":
        assert got == [NodeRow(500, 9, 0, bytes(8))]
    elif case == "nodes_partly_readable":
        assert 300 < len(got) < 399 and all(r == rows[r.node_id - 1] for r in got)
        assert any("salvage_nodes_partial" in r.getMessage() for r in caplog.records)
    assert any("outbox_salvage_failed" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.ERROR) is failed
    ob.close()


def test_a_file_from_before_the_marks_log_salvages_without_an_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """No ``marks`` table is how such a file looks, not damage: nothing to report."""
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.executescript("CREATE TABLE nodes (node_id INTEGER PRIMARY KEY, fcnt INTEGER NOT NULL, "
                     "dcnt INTEGER NOT NULL, recent BLOB NOT NULL);"
                     "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,"
                     " frames INTEGER NOT NULL, created_s REAL NOT NULL, crc INTEGER NOT NULL, payload BLOB NOT NULL);"
                     "CREATE TABLE downlinks (node_id INTEGER PRIMARY KEY, commands TEXT NOT NULL);"
                     "INSERT INTO nodes VALUES (7, 50, 2, x'');")
    db.close()
    new = connect(tmp_path / "new.db", "full", None)
    with caplog.at_level(logging.WARNING):
        s = salvage(old, new, Metrics())
    assert not s.failed and new.execute("SELECT * FROM nodes").fetchall() == [(7, 50, 2, b"\xff" * 8)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    new.close()


def test_a_file_without_a_downlinks_table_still_gives_its_marks_and_batches(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    db = connect(old, "full", None)
    db.execute("INSERT INTO nodes VALUES (3, 4, 0, x'01')")
    db.execute("INSERT INTO batches VALUES (1, 0, 1, 0.0, ?, x'81')", (zlib.crc32(b"\x81"),))
    db.execute("DROP TABLE downlinks")
    db.close()
    new = connect(tmp_path / "new.db", "full", None)
    s = salvage(old, new, Metrics())
    assert (s.nodes, s.downlinks, s.batches, s.failed) == (1, 0, 1, False)
    assert new.execute("SELECT * FROM nodes").fetchall() == [(3, 4, 0, b"\x01")]
    new.close()


def test_a_moved_aside_file_that_cannot_be_opened_is_a_failed_salvage(tmp_path: Path) -> None:
    new = connect(tmp_path / "new.db", "full", None)
    s = salvage(tmp_path / "gone.db", new, Metrics())
    assert s.failed and (s.nodes, s.downlinks, s.batches) == (0, 0, 0)
    new.close()


@pytest.mark.parametrize("chunk,per_transaction", [(3000 * 7, 7), (3000 * 7 + 1, 8)])
def test_batches_are_copied_in_transactions_of_salvage_chunk_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, per_transaction: int,
) -> None:
    """A transaction commits once it holds ``_SALVAGE_CHUNK_BYTES`` of payload (4 MiB), so the
    WAL can checkpoint while a large file is copied; every clean row is copied."""
    monkeypatch.setattr(salvage_mod, "_SALVAGE_CHUNK_BYTES", chunk)
    old = tmp_path / "old.db"
    db = connect(old, "full", None)
    pay = [random.Random(i).randbytes(3000) for i in range(40)]
    db.executemany("INSERT INTO batches VALUES (?, 0, 1, 0.0, ?, ?)",
                   [(i + 1, zlib.crc32(p), p) for i, p in enumerate(pay)])
    db.close()
    new = connect(tmp_path / "new.db", "full", None)
    sizes: list[int] = []
    real_write = salvage_mod.write

    def counting(db: sqlite3.Connection, body: object, metrics: Metrics) -> None:
        before = db.total_changes
        real_write(db, body, metrics)  # type: ignore[arg-type]
        sizes.append(db.total_changes - before)

    monkeypatch.setattr(salvage_mod, "write", counting)
    s = salvage(old, new, Metrics())
    batch_txs = sizes[1:]  # the first: marks and downlinks
    assert batch_txs[:-1] == [per_transaction] * (len(batch_txs) - 1)
    assert sum(batch_txs) == 40 == s.batches and 0 < batch_txs[-1] <= per_transaction
    assert [p for (p,) in new.execute("SELECT payload FROM batches ORDER BY id")] == pay
    new.close()
