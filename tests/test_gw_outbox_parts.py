"""The outbox's parts at their own API (issue 18): the index of waiting batches against a model,
the stored forms (deflate, the CRC column, rows of older files), the staging journal's bytes
and syncs, and the file's pragmas. Fast and sharp: the outbox's mutation run selects these."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metrics import Metrics
from gateway.outbox import SD_PAGE_SIZE, Outbox, load_pack, stored_bytes
from gateway.outbox._deflate import (
    DEFLATED,
    MIN_DEFLATE_BYTES,
    crc_ok,
    load_marks,
    store_marks,
    store_pack,
)
from gateway.outbox._marks import MARK, unpack_marks
from gateway.outbox._pending import PRIORITY_ALARM, PRIORITY_ORDINARY, Pending
from gateway.outbox._sqlite import connect, error_code, write
from gateway.outbox._staging import StagedFrame, StagingJournal, decode, encode

# -- the index of waiting batches -------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 3), st.integers(1, 5000), st.booleans(), st.integers(0, 100)),
    st.tuples(st.just("bulk"), st.integers(1, 700), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("remove"), st.integers(0, 4000)),
    st.tuples(st.just("ack_oldest"), st.integers(1, 900)),
    st.tuples(st.just("evict"), st.integers(-10, 60_000)),
)


def _model_oldest(rows: dict[int, tuple[int, int, int]], excess: int) -> list[int]:
    out = []
    for want in (PRIORITY_ORDINARY, PRIORITY_ALARM):
        for i in sorted(rows):
            if excess <= 0:
                break
            if rows[i][1] == want:
                out.append(i)
                excess -= rows[i][0]
    return out


def _check(p: Pending, rows: dict[int, tuple[int, int, int]]) -> None:
    ids = sorted(rows)
    assert p.all_ids() == ids and p.live == len(ids)
    for after in (0, *ids[:: max(1, len(ids) // 7)], ids[-1] if ids else 0):
        for limit in (1, 3, 1000):
            assert p.after(after, limit) == [i for i in ids if i > after][:limit]


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=40))
def test_the_index_matches_a_model_through_acks_evictions_and_compactions(ops: list[tuple]) -> None:
    """ids in order, live count, after(), oldest() (ordinary first, then alarms, each oldest
    first, until the excess is covered) and remove() agree with a dict, across the squeezes of
    dead rows (more than 1024 and more than the living)."""
    p = Pending()
    rows: dict[int, tuple[int, int, int]] = {}  # id -> (nbytes, priority, frames)
    last = 0
    for op in ops:
        if op[0] in ("add", "bulk"):
            n = 1 if op[0] == "add" else op[1]
            for _ in range(n):
                last += op[1] if op[0] == "add" else op[2]
                nbytes, prio, frames = (op[2], int(op[3]), op[4]) if op[0] == "add" else (300, int(op[3]), 2)
                p.append(last, nbytes, PRIORITY_ALARM if prio else PRIORITY_ORDINARY, frames)
                rows[last] = (nbytes, prio, frames)
        elif op[0] == "remove":
            want = rows.pop(op[1], None)
            assert p.remove(op[1]) == want
            assert op[1] not in p
        elif op[0] == "ack_oldest":
            for i in sorted(rows)[: op[1]]:
                assert i in p
                assert p.remove(i) == rows.pop(i)
        else:
            got = p.oldest(op[1])
            assert got == _model_oldest(rows, op[1])
            for i in got[: len(got) // 2]:  # evict the first half: the cursors must still find the rest
                assert p.remove(i) == rows.pop(i)
        _check(p, rows)
    assert p.oldest(1 << 40) == _model_oldest(rows, 1 << 40)


def test_the_index_refuses_ids_that_do_not_grow_and_takes_any_true_priority_as_alarm() -> None:
    p = Pending()
    p.append(5, 100, PRIORITY_ORDINARY, 1)
    for bad in (5, 4):
        with pytest.raises(ValueError):
            p.append(bad, 100, PRIORITY_ORDINARY, 1)
    p.append(6, 100, 7, 1)  # a truthy priority is an alarm
    assert p.oldest(150) == [5, 6] and p.remove(6) == (100, PRIORITY_ALARM, 1)
    assert p.remove(6) is None and p.remove(99) is None and p.live == 1


def test_the_index_compacts_once_the_dead_outnumber_the_living() -> None:
    """Bounded memory: acked rows do not stay in the arrays for good."""
    p = Pending()
    for i in range(1, 3001):
        p.append(i, 200, PRIORITY_ORDINARY, 1)
    for i in range(1, 1501):
        p.remove(i)
    assert len(p.ids) == 3000, "1500 dead, 1500 living: not yet"
    p.remove(1501)
    assert len(p.ids) == 1499 and list(p.ids) == list(range(1502, 3001))
    assert p.oldest(250) == [1502, 1503] and p.after(0, 2) == [1502, 1503]
    q = Pending()
    for i in range(1, 1001):
        q.append(i, 200, PRIORITY_ORDINARY, 1)
    for i in range(1, 1001):
        q.remove(i)
    assert len(q.ids) == 1000, "fewer than 1024 dead rows are not worth a squeeze"


# -- stored forms -----------------------------------------------------------------------------

# A pack of 1,200 zero bytes, deflated by this gateway (level 1, 4 KiB window) and stored with
# the flag in its crc column: files on the card hold such rows, every later version reads them.
_OLD_STORED = bytes.fromhex("480d63601805a321301a02a321303442000004b00001")
_OLD_CRC = zlib.crc32(_OLD_STORED) | 1 << 32


def test_rows_written_by_earlier_gateways_read_back() -> None:
    assert load_pack(_OLD_STORED, _OLD_CRC) == bytes(1200)
    assert load_pack(b"raw pack", zlib.crc32(b"raw pack")) == b"raw pack"


def test_deflate_only_from_min_deflate_bytes_and_only_when_smaller() -> None:
    """A few frames share a page whatever their size: not worth zlib's set-up. The stream has a
    4 KiB window (CMF 0x48), which a reader with that window inflates."""
    below = bytes(MIN_DEFLATE_BYTES - 1)
    assert store_pack(below) == (below, zlib.crc32(below))
    at = bytes(MIN_DEFLATE_BYTES)
    stored, crc = store_pack(at)
    assert crc == zlib.crc32(stored) | DEFLATED and len(stored) < 40 and stored[0] == 0x48
    assert zlib.decompressobj(12).decompress(stored) == at
    noise = zlib.compress(os.urandom(3000), 9)  # does not deflate further
    assert store_pack(noise) == (noise, zlib.crc32(noise))


@pytest.mark.parametrize("payload,crc", [
    ("text", zlib.crc32(b"text")), (None, 0), (12, 12), (b"pack", float(zlib.crc32(b"pack"))),
    (b"pack", None), (b"pack", str(zlib.crc32(b"pack"))), (b"pack", zlib.crc32(b"pack") ^ 1 << 31),
    (b"pack", zlib.crc32(b"pack") | 1 << 33),
])
def test_a_damaged_rows_columns_fail_the_crc_without_raising(payload: object, crc: object) -> None:
    assert not crc_ok(payload, crc)


def test_the_crc_column_checks_the_stored_bytes_with_or_without_the_flag() -> None:
    assert crc_ok(b"pack", zlib.crc32(b"pack")) and crc_ok(b"pack", zlib.crc32(b"pack") | DEFLATED)
    assert load_pack(b"pack", zlib.crc32(b"pack") | DEFLATED) is None, "flagged but no deflate stream"


def test_marks_rows_deflate_from_min_deflate_bytes_and_never_look_raw() -> None:
    """A deflated marks row must never be a multiple of the row size (it would read as raw
    rows): a zero byte is appended then. Found by searching row counts for such a stream."""
    row = MARK.size
    small = MARK.pack(1, 2, 3, 8, bytes(8)) * (MIN_DEFLATE_BYTES // row)
    assert len(small) < MIN_DEFLATE_BYTES and store_marks(small, row) == small
    hit = None
    for n in range(MIN_DEFLATE_BYTES // row + 1, 3000):
        rows = b"".join(MARK.pack(0x1000 + i, 7 * i, i % 5, 8, (i * 0x0101).to_bytes(8, "little")) for i in range(n))
        co = zlib.compressobj(1, zlib.DEFLATED, 12, 5)
        if len(co.compress(rows) + co.flush()) % row == 0:
            hit = rows
            break
    assert hit is not None
    stored = store_marks(hit, row)
    assert len(stored) % row and len(stored) < len(hit) and load_marks(stored, row) == hit
    assert [r[0] for r in unpack_marks(stored)] == [0x1000 + i for i in range(len(hit) // row)]
    noise = os.urandom(row * 100)
    assert store_marks(noise, row) == noise and load_marks(noise, row) == noise


def test_marks_rows_that_are_not_bytes_or_do_not_inflate_yield_nothing() -> None:
    one = MARK.pack(9, 10, 11, 3, b"\x01\x02\x03" + bytes(5))
    assert unpack_marks(one + bytes(MARK.size - 1)) == []  # not whole rows, and no deflate stream
    assert unpack_marks(one) == [(9, 10, 11, b"\x01\x02\x03")]
    assert unpack_marks(None) == [] and unpack_marks("x" * MARK.size) == []
    deflated = store_marks(one * 200, MARK.size)
    assert len(unpack_marks(deflated)) == 200 and unpack_marks(deflated[:-5]) == []


# -- the staging journal ----------------------------------------------------------------------


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every fsync / fdatasync the process makes, by kind and fd (the real call still runs)."""
    calls: list[tuple[str, int]] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        calls.append(("fdatasync", fd))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    yield calls


def _f(n: int, fcnt: int, size: int = 20) -> StagedFrame:
    return StagedFrame(n, fcnt, fcnt % 2, 1 + fcnt % 3, bytes([fcnt % 256]) * size)


def test_staging_is_fdatasynced_with_full_and_not_with_normal(tmp_path: Path, syncs: list[tuple[str, int]]) -> None:
    """synchronous = full: the journal's new name is fsynced in its directory once, each staging
    is fdatasynced before it returns; normal: neither."""
    j = StagingJournal(tmp_path / "full-staged", sync=True)
    assert [k for k, _ in syncs] == ["fsync"] and syncs[0][1] != j._fd
    syncs.clear()
    assert j.append([_f(1, 1)]) == len(encode([_f(1, 1)]))
    assert syncs == [("fdatasync", j._fd)]
    j.close()
    syncs.clear()
    StagingJournal(tmp_path / "full-staged", sync=True).close()
    assert syncs == [], "an existing journal's name is on disk already"
    n = StagingJournal(tmp_path / "normal-staged", sync=False)
    n.append([_f(1, 1)])
    n.close()
    assert syncs == []


def test_the_journal_overwrites_from_its_start_and_reads_back_what_a_process_left(tmp_path: Path) -> None:
    path = tmp_path / "o-staged"
    j = StagingJournal(path, sync=False)
    first = [_f(1, 1), _f(2, 1, 50)]
    j.append(first)
    j.append([_f(1, 2)])
    j.append([_f(2, 2, 5)])  # each staging after the last
    assert decode(path.read_bytes()) == ([*first, _f(1, 2), _f(2, 2, 5)], j.size)
    j.clear()  # in a committed batch: the next records go to the start, nothing written
    size = path.stat().st_size
    assert size == len(encode([*first, _f(1, 2), _f(2, 2, 5)]))
    j.append([_f(3, 9)])
    j.close()
    assert path.stat().st_size == size, "overwritten, not truncated"
    again = StagingJournal(path, sync=False)
    # The new record, then old records the reset left behind (their counters are in batches).
    assert again.frames[0] == _f(3, 9) and again.size == len(encode(again.frames))
    again.close()


def test_a_torn_tail_is_overwritten_by_the_next_staging(tmp_path: Path) -> None:
    path = tmp_path / "o-staged"
    good = encode([_f(4, 1), _f(4, 2)])
    path.write_bytes(good + encode([_f(4, 3)])[:-3])
    j = StagingJournal(path, sync=False)
    assert j.frames == [_f(4, 1), _f(4, 2)] and j.size == len(good)
    j.append([_f(4, 4)])
    j.close()
    assert decode(path.read_bytes())[0] == [_f(4, 1), _f(4, 2), _f(4, 4)]


@pytest.mark.parametrize("damage", ["short_length", "crc", "cut"])
def test_decode_stops_at_the_first_damaged_record(damage: str) -> None:
    a, b, c = encode([_f(1, 1)]), encode([_f(1, 2)]), encode([_f(1, 3)])
    if damage == "short_length":  # a length below the fixed fields, with a CRC that matches
        rest = b"\x01\x02"
        b = len(rest).to_bytes(2, "little") + zlib.crc32(rest).to_bytes(4, "little") + rest
    elif damage == "crc":
        b = b[:-1] + bytes([b[-1] ^ 1])
    else:
        b = b[:-1]
        c = b""
    assert decode(a + b + c) == ([_f(1, 1)], len(a))


def test_a_short_write_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = StagingJournal(tmp_path / "o-staged", sync=False)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: len(data) - 1)
    with pytest.raises(OSError, match="short write"):
        j.append([_f(1, 1)])
    assert j.size == 0
    j.close()


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setting,pragma", [("full", 2), ("normal", 1)])
def test_the_file_syncs_as_configured_in_wal_mode(tmp_path: Path, setting: str, pragma: int) -> None:
    """``synchronous``: FULL fsyncs the WAL at every commit (power-cut safe), NORMAL only at
    checkpoints; secure_delete FAST (deleted batches not zeroed by a second write)."""
    ob = Outbox(tmp_path / "o.db", 1 << 20, synchronous=setting)
    db = ob._db
    assert db.execute("PRAGMA synchronous").fetchone()[0] == pragma
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 2
    assert ob._staging._sync is (setting == "full")
    ob.close()


def test_a_new_file_is_0600_whatever_the_umask_and_takes_the_page_size(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ob = Outbox(tmp_path / "o.db", 1 << 20, page_size=512)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.db").stat().st_mode) == 0o600
    assert ob._db.execute("PRAGMA page_size").fetchone()[0] == 512 and ob._page_size == 512
    ob.close()
    ob = Outbox(tmp_path / "o.db", 1 << 20, page_size=1024)  # an existing file keeps its own
    assert ob._page_size == 512
    ob.close()
    ob = Outbox(tmp_path / "default.db", 1 << 20)
    assert ob._page_size == 4096
    ob.close()


def test_a_write_that_fails_leaves_nothing_and_counts_what_it_wrote(tmp_path: Path) -> None:
    m = Metrics()
    db = connect(tmp_path / "o.db", "full", None)

    def body() -> None:
        db.execute("INSERT INTO downlinks VALUES (1, 'a')")
        raise RuntimeError("midway")

    with pytest.raises(RuntimeError):
        write(db, body, m)
    assert not db.in_transaction and db.execute("SELECT count(*) FROM downlinks").fetchone()[0] == 0
    write(db, lambda: db.execute("INSERT INTO downlinks VALUES (2, ?)", ("x" * 5000,)), m)
    assert m.disk_bytes_written.total() >= 5000, "the commit's bytes counted as disk wear"
    other = sqlite3.connect(tmp_path / "o.db")
    assert other.execute("SELECT node_id FROM downlinks").fetchall() == [(2,)]
    other.close()
    db.close()


def test_error_code_is_the_primary_code_of_an_extended_one(tmp_path: Path) -> None:
    class Exc(Exception):
        sqlite_errorcode = sqlite3.SQLITE_FULL | 3 << 8

    assert error_code(Exc()) == sqlite3.SQLITE_FULL and error_code(ValueError()) == 0
    try:
        sqlite3.connect(tmp_path).execute("SELECT 1")  # a directory: SQLITE_CANTOPEN
    except sqlite3.OperationalError as exc:
        assert error_code(exc) == sqlite3.SQLITE_CANTOPEN


# -- what a batch costs in the file --------------------------------------------------------------


def _file_bytes_per_row(tmp_path: Path, size: int, page_size: int) -> float:
    path = tmp_path / f"s{size}-{page_size}.db"
    connect(path, "normal", page_size).close()  # the outbox's schema
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    n = max(120, (384 << 10) // size)
    rng = random.Random(size)
    db.executemany("INSERT INTO batches (priority, frames, created_s, crc, payload) VALUES (?,?,?,?,?)",
                   [(0, 50, 1.8e9 + i + 0.25, zlib.crc32(rng.randbytes(4)) | DEFLATED, rng.randbytes(size))
                    for i in range(n)])
    db.commit()
    (table_bytes,) = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'batches'").fetchone()
    db.close()
    return float(table_bytes) / n  # the table's pages, leaves, interior and overflow: not the schema's


@pytest.mark.parametrize("page_size,sizes", [
    (SD_PAGE_SIZE, range(40, 6000, 97)),
    (4096, range(40, 17000, 457)),
])
def test_stored_bytes_never_undercounts_the_file(tmp_path: Path, page_size: int, sizes: range) -> None:
    """``max_bytes`` bounds the file only if no batch costs more than counted. A row that
    spills into overflow pages keeps a head in its leaf, and a leaf holds whole cells only: a
    760-byte pack in 512-byte pages took 980 bytes of file, counted 760 (the bound exceeded by
    29 %); 6 KiB in 4 KiB pages, 25 %. Over-counting stays within 16 % (tiny rows, boundaries)."""
    worst = []
    for size in sizes:
        ratio = stored_bytes(size, page_size) / _file_bytes_per_row(tmp_path, size, page_size)
        worst.append((ratio, size))
    assert min(worst)[0] > 0.97, f"undercounts: {sorted(worst)[:5]}"
    assert max(worst)[0] < 1.16, f"overcounts: {sorted(worst)[-5:]}"
