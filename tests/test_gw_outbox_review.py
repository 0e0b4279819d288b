"""Corners of the outbox found by its mutation review (issue 18, bench/mutation-equivalents.md):
each test here failed with one surviving mutant of gateway/outbox/*.py."""

from __future__ import annotations

import random
import sqlite3
import zlib
from pathlib import Path

import pytest

from gateway.flow import NodeRow
from gateway.outbox import Outbox
from gateway.outbox._deflate import MIN_DEFLATE_BYTES, store_marks
from gateway.outbox._marks import MARK, unpack_marks
from gateway.outbox._pending import PRIORITY_ALARM, PRIORITY_ORDINARY, Pending
from gateway.outbox._salvage import _DamagedTable
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
