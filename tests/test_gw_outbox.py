"""The outbox under a full disk, a corrupt file, a quiet site's acks, and many tiny batches."""

from __future__ import annotations

import functools
import gc
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway.outbox._outbox as outbox_mod
from gateway.errors import OutboxFull
from gateway.flow import NodeRow
from gateway.metrics import Metrics
from gateway.outbox import (
    ACK_FLUSH_COUNT,
    PRIORITY_ALARM,
    PRIORITY_ORDINARY,
    SD_PAGE_SIZE,
    Outbox,
    stored_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
KIB = 1024


def _pages(ob: Outbox) -> int:
    return int(ob._db.execute("PRAGMA page_count").fetchone()[0])


def _cap_pages(ob: Outbox, pages: int) -> None:
    """Simulate a disk that holds ``pages`` more database pages (SQLITE_FULL beyond)."""
    ob._db.execute(f"PRAGMA max_page_count={_pages(ob) + pages}")


def _rows(path: Path) -> dict[int, tuple[int, int, bytes]]:
    db = sqlite3.connect(path)
    try:
        return {i: (p, f, b) for i, p, f, b in db.execute(
            "SELECT id, priority, frames, payload FROM batches")}
    finally:
        db.close()


def _payload(i: int, size: int = 1000) -> bytes:
    """Bytes that do not deflate, so each row takes ``size`` bytes of the file."""
    return random.Random(i).randbytes(size)


# -- disk full ------------------------------------------------------------------------------


def test_disk_full_evicts_oldest_ordinary_keeps_alarms_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """SQLITE_FULL long before max_bytes: every commit still lands, the oldest ordinary go."""
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", max_bytes=64 << 20, metrics=m)
    alarms = [ob.commit_batch(_payload(i), 2, PRIORITY_ALARM) for i in range(3)]
    _cap_pages(ob, 40)  # ~160 KiB: room for ~110 rows of 1 KiB
    ids = []
    for i in range(400):
        ids.append(ob.commit_batch(_payload(100 + i), 5, PRIORITY_ORDINARY,
                                   [NodeRow(7, 100 + i, 0, bytes(8))]))
    dropped = m.outbox_dropped_batches.get("ordinary")
    assert dropped > 250 and m.outbox_dropped_batches.get("alarm") == 0
    left = ob.pending_ids()
    assert left[:3] == alarms, "the oldest rows, alarms, outlive every evicted ordinary batch"
    assert left[-1] == ids[-1] and ids[0] not in left
    assert left[3:] == ids[len(ids) - len(left) + 3:], "what is left is the newest, contiguous"
    assert m.outbox_dropped_readings.total() == 5 * dropped
    assert m.readings_committed.total() == 6 + 5 * 400
    assert ob.load_nodes() == [NodeRow(7, 499, 0, bytes(8))], "node state rode every commit"
    stored = _rows(tmp_path / "o.db")
    assert sorted(stored) == left
    assert ob.bytes == sum(stored_bytes(len(p)) for _, _, p in stored.values())
    assert [b.batch_id for b in ob.peek(0, 1000)] == left
    full_logs = [r for r in caplog.records if "outbox_disk_full" in r.getMessage()]
    assert len([r for r in full_logs if r.levelno >= logging.WARNING]) == 1, "rate-limited"

    # Space returns: commits land with no more drops.
    ob._db.execute("PRAGMA max_page_count=1073741823")
    for i in range(200):
        ob.commit_batch(_payload(900 + i), 5, PRIORITY_ORDINARY)
    assert m.outbox_dropped_batches.total() == dropped
    assert ob.depth == len(left) + 200
    ob.close()


def test_disk_full_raises_outbox_full_and_changes_nothing(tmp_path: Path) -> None:
    """A batch no eviction can make room for: OutboxFull, and the outbox is as it was."""
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", max_bytes=64 << 20, metrics=m)
    for i in range(20):
        ob.commit_batch(_payload(i), 5, PRIORITY_ORDINARY, [NodeRow(1, i, 0, bytes(8))])
    _cap_pages(ob, 4)
    before = (ob.pending_ids(), ob.bytes, ob.load_nodes())
    with pytest.raises(OutboxFull) as exc:
        ob.commit_batch(_payload(99, 400 * KIB), 7, PRIORITY_ORDINARY, [NodeRow(1, 99, 0, bytes(8))])
    assert exc.value.frames == 7
    assert (ob.pending_ids(), ob.bytes, ob.load_nodes()) == before
    assert m.outbox_dropped_batches.total() == 0, "a failed commit drops nothing"
    ob.commit_batch(_payload(100), 1, PRIORITY_ORDINARY)  # and the next one still lands
    ob.close()


def test_put_downlink_on_a_full_disk_raises_outbox_full(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=64 << 20)
    _cap_pages(ob, 0)
    with pytest.raises(OutboxFull) as exc:
        ob.put_downlink(3, "x" * 8000)
    assert exc.value.frames == 0 and ob.load_downlinks() == {}, "no reading lost, nothing stored"
    ob.close()


# -- a corrupt file -------------------------------------------------------------------------


def _btree_pages(path: Path, table: str, pagetype: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [p for (p,) in db.execute(
            "SELECT pageno FROM dbstat WHERE name=? AND pagetype=? ORDER BY pageno",
            (table, pagetype))]
    finally:
        db.close()


def _smash(path: Path, pages: list[int], page_size: int = 4096) -> None:
    with path.open("r+b") as f:
        for p in pages:
            f.seek((p - 1) * page_size)
            f.write(b"\xee" * 64)  # no valid b-tree page type, cell count or pointers


def test_corrupt_batch_pages_keep_replay_marks_downlinks_and_clean_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The file fails its check, yet every node's mark and window and the readable batches stay."""
    path = tmp_path / "o.db"
    ob = Outbox(path, 64 << 20)
    payloads = {}
    for i in range(150):
        rows = [NodeRow(n, 1000 * n + i, i, (n * i).to_bytes(8, "little")) for n in range(1, 41)]
        payloads[ob.commit_batch(_payload(i, 3000), 40, i % 10 == 0, rows)] = _payload(i, 3000)
    ob.put_downlink(5, '{"1": 900}')
    nodes, downlinks = sorted(ob.load_nodes(), key=lambda r: r.node_id), ob.load_downlinks()
    ob.close()
    leaves = _btree_pages(path, "batches", "leaf")
    assert len(leaves) > 100  # one 3 KB row per leaf page
    _smash(path, leaves[::3])

    m = Metrics()
    ob = Outbox(path, 64 << 20, m)
    assert m.outbox_corrupt.get() >= 1 and ob.salvage.moved_to is not None
    assert ob.salvage.moved_to.exists() and not ob.salvage.failed
    assert sorted(ob.load_nodes(), key=lambda r: r.node_id) == nodes
    assert ob.load_downlinks() == downlinks
    kept = ob.peek(0, 1000)
    assert 80 <= len(kept) <= 150 - len(leaves[::3]) and ob.salvage.batches == len(kept)
    assert all(b.payload == payloads[b.batch_id] for b in kept)
    assert [b.batch_id for b in kept] == sorted(b.batch_id for b in kept)
    assert any("outbox_salvaged" in r.getMessage() for r in caplog.records)
    # New batches continue after the salvaged ids, so the publish order holds.
    assert ob.commit_batch(b"new", 1, PRIORITY_ORDINARY) > max(payloads)
    ob.close()


def test_salvage_steps_over_a_bad_page_inside_the_nodes_table(tmp_path: Path) -> None:
    """A damaged leaf of a many-page nodes table costs its own rows only."""
    path = tmp_path / "o.db"
    ob = Outbox(path, 64 << 20)
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY,
                    [NodeRow(n * 7, n, 0, bytes(8)) for n in range(3000)])
    ob.close()
    leaves = _btree_pages(path, "nodes", "leaf")
    assert len(leaves) > 10
    _smash(path, [leaves[len(leaves) // 2]])
    ob = Outbox(path, 64 << 20)
    got = {r.node_id: r for r in ob.load_nodes()}
    lost = 3000 - len(got)
    assert 0 < lost < 3000 // len(leaves) * 2, f"{lost} rows lost to one page"
    assert all(r == NodeRow(r.node_id, r.node_id // 7, 0, bytes(8)) for r in got.values())
    ob.close()


def test_garbage_file_salvage_fails_loudly_and_the_outbox_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    m = Metrics()
    ob = Outbox(path, 10**6, m)
    assert ob.salvage.failed and ob.salvage.nodes == 0 and ob.depth == 0
    assert m.outbox_corrupt.get() == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("outbox_salvage_failed" in r.getMessage() for r in errors)
    ob.commit_batch(b"x", 1, PRIORITY_ORDINARY, [NodeRow(1, 5, 0, bytes(8))])
    ob.close()
    assert Outbox(path, 10**6).load_nodes() == [NodeRow(1, 5, 0, bytes(8))]


def test_a_locked_file_is_not_taken_for_a_corrupt_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLITE_BUSY (another process holds it) must fail the start, not move the file aside."""
    path = tmp_path / "o.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, timeout=0.05))
    with pytest.raises(sqlite3.OperationalError):
        Outbox(path, 10**6)
    holder.execute("ROLLBACK")
    holder.close()
    assert not list(tmp_path.glob("o.db.corrupt-*"))


# -- acks: few writes, no losses ----------------------------------------------------------


class _CountingDb:
    """Stands in for the connection during a peek: counts the rows SQLite hands back."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.rows = 0

    def execute(self, *args: Any) -> Iterator[Any]:
        for row in self.db.execute(*args):
            self.rows += 1
            yield row


def test_flush_acks_writes_only_when_many_or_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(outbox_mod.time, "monotonic", lambda: now[0])
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", 10**7, m, ack_flush_s=0.3)
    ids = [ob.commit_batch(_payload(i, 100), 1, PRIORITY_ORDINARY) for i in range(ACK_FLUSH_COUNT + 60)]
    for b in ids[:50]:
        ob.ack(b)
    changes, written = ob._db.total_changes, m.disk_bytes_written.total()
    for _ in range(5):  # the gateway's chores loop calls it every second
        ob.flush_acks()
    assert ob._db.total_changes == changes and m.disk_bytes_written.total() == written
    assert len(_rows(tmp_path / "o.db")) == len(ids), "nothing deleted yet"
    assert [b.batch_id for b in ob.peek(0, 3)] == ids[50:53], "acked rows are not offered again"
    now[0] += 0.35
    ob.flush_acks()
    assert len(_rows(tmp_path / "o.db")) == len(ids) - 50 and m.disk_bytes_written.total() > written

    # Enough deletes are worth a write of their own, whatever their age.
    ob.ack_flush_s = 3600.0
    for b in ids[50:50 + ACK_FLUSH_COUNT - 1]:
        ob.ack(b)
    ob.flush_acks()
    assert len(_rows(tmp_path / "o.db")) == len(ids) - 50
    ob.ack(ids[50 + ACK_FLUSH_COUNT - 1])
    ob.flush_acks()
    assert len(_rows(tmp_path / "o.db")) == 10
    # A commit takes the waiting deletes along.
    ob.ack(ids[-1])
    ob.commit_batch(b"y", 1, PRIORITY_ORDINARY)
    assert ids[-1] not in _rows(tmp_path / "o.db")
    ob.close()


def test_peek_reads_no_acked_rows_however_many(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 10**8, synchronous="normal", ack_flush_s=3600.0)
    db = ob._db
    db.execute("BEGIN")
    db.executemany("INSERT INTO batches (priority, frames, created_s, crc, payload) VALUES (?,?,?,?,?)",
                   [(0, 1, 0.0, zlib.crc32(b"p%d" % i), b"p%d" % i) for i in range(6000)])
    db.execute("COMMIT")
    ob.close()
    ob = Outbox(tmp_path / "o.db", 10**8, synchronous="normal", ack_flush_s=3600.0)
    ids = ob.pending_ids()
    for b in ids[:5000] + ids[5010:5020]:  # in order, and a few out of order
        ob.ack(b)
    counting = _CountingDb(ob._db)
    ob._db = counting  # type: ignore[assignment]
    got = ob.peek(0, 16)
    ob._db = counting.db
    assert [b.batch_id for b in got] == ids[5000:5010] + ids[5020:5026]
    assert counting.rows <= 26, f"read {counting.rows} rows for 16 batches"
    ob.close()


_KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from gateway.outbox import Outbox
ob = Outbox(Path(sys.argv[1]), 10**7)
ids = [ob.commit_batch(b"batch %d" % i, 1, 0) for i in range(20)]
for b in ids[:12]:
    ob.ack(b)
ob.flush_acks()  # within ack_flush_s: writes nothing
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_with_deletes_pending_redelivers_never_loses(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    rc = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(path)], cwd=ROOT,
                        timeout=60, check=False).returncode
    assert rc == -9
    ob = Outbox(path, 10**7)
    got = [b.payload for b in ob.peek(0, 100)]
    assert got == [b"batch %d" % i for i in range(20)], "acked ones come again (duplicates)"
    ob.close()


# -- memory and disk bounds --------------------------------------------------------------------


def test_index_costs_few_bytes_per_waiting_batch(tmp_path: Path) -> None:
    """Tracemalloc over 50k tiny batches: ~18 B a row (a dict of tuples took ~150 B)."""
    n = 50_000
    path = tmp_path / "o.db"
    Outbox(path, 1 << 40).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    p = b"\xa1\x00\x01" * 10
    db.executemany("INSERT INTO batches (priority, frames, created_s, crc, payload) VALUES (?,?,?,?,?)",
                   ((i % 50 == 0, 1, 0.0, zlib.crc32(p), p) for i in range(n)))
    db.execute("COMMIT")
    db.close()
    gc.collect()
    tracemalloc.start()
    try:
        ob = Outbox(path, 1 << 40, synchronous="normal")
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ob.depth == n
    assert held / n < 32, f"{held / n:.1f} B per waiting batch"
    ob.close()


@pytest.mark.parametrize("page_size", [4096, SD_PAGE_SIZE])
@pytest.mark.parametrize("size", [20, 300, 1000, 2000, 3000, 4100, 16384])
def test_stored_bytes_matches_the_file(tmp_path: Path, size: int, page_size: int) -> None:
    path = tmp_path / "o.db"
    Outbox(path, 1 << 40, page_size=page_size).close()
    db = sqlite3.connect(path, isolation_level=None)
    n = max(200, (2 << 20) // size)
    db.execute("BEGIN")
    db.executemany("INSERT INTO batches (priority, frames, created_s, crc, payload) VALUES (?,?,?,?,?)",
                   [(0, 50, time.time(), zlib.crc32(os.urandom(4)) | 1 << 31, os.urandom(size))
                    for _ in range(n)])
    db.execute("COMMIT")
    db.close()
    real = path.stat().st_size / n
    est = stored_bytes(size, page_size)
    assert 0.97 < est / real < 1.1, f"estimate {est} vs {real:.0f} B"


def test_quiet_site_tiny_batches_stay_under_max_bytes(tmp_path: Path) -> None:
    """Counting payload alone, 30-byte packs would fill a file twice the configured size."""
    path = tmp_path / "o.db"
    max_bytes = 256 * KIB
    ob = Outbox(path, max_bytes, synchronous="normal")
    for i in range(9000):
        ob.commit_batch(b"\xa1\x00\x01" * 9 + i.to_bytes(3, "little"), 1, PRIORITY_ORDINARY)
    assert ob.bytes <= max_bytes
    ob.close()
    assert path.stat().st_size <= max_bytes + 8 * 4096, f"{path.stat().st_size} B on disk"
