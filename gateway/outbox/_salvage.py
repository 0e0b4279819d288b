"""Start-up only: a file SQLite cannot read is moved aside, and what still reads is copied out.

Replay marks first (losing them would let captured old frames in again), then downlinks, then
batches whose CRC verifies. A locked file, a full disk or bad permissions are not damage: they
raise. Nothing here runs once the outbox is open.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.metrics import Metrics
from gateway.outbox._deflate import crc_ok
from gateway.outbox._marks import unpack_marks
from gateway.outbox._sqlite import UNREADABLE, connect, error_code, write

_log = logging.getLogger("gateway.outbox")

_MAX_ROWID: Final = (1 << 63) - 1
_CAREFUL_ROWS: Final = 64  # read one by one after damage, then stream again
_LINEAR_PROBES: Final = 512  # probes at the rows' own spacing past a bad page, then doubling
_SALVAGE_CHUNK_BYTES: Final = 4 << 20  # one transaction per 4 MiB: the WAL can checkpoint


@dataclass(slots=True)
class Salvage:
    """What was copied out of a database file moved aside at start-up."""

    moved_to: Path | None = None
    nodes: int = 0
    downlinks: int = 0
    batches: int = 0
    failed: bool = False  # nothing could be read: every node's replay mark is lost


class _QuickCheckFailed(Exception):
    pass


def open_or_move_aside(
    path: Path, synchronous: str, page_size: int | None, metrics: Metrics,
) -> tuple[sqlite3.Connection, Path | None]:
    """The file opened; if it cannot be read, a fresh one and where the old one now lies."""
    try:
        db = connect(path, synchronous, page_size)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _QuickCheckFailed("quick_check failed")
        except BaseException:
            db.close()
            raise
        return db, None
    except (sqlite3.DatabaseError, _QuickCheckFailed) as exc:
        # A locked file, a full disk or bad permissions are not corruption: fail loudly.
        if isinstance(exc, sqlite3.DatabaseError) and error_code(exc) not in UNREADABLE:
            raise
        # Keep the file for forensics and salvage, start afresh, count.
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        _log.error("event=outbox_corrupt path=%s error=%r moved_to=%s", path, exc, aside)
        metrics.outbox_corrupt.inc()
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                p.replace(Path(str(aside) + suffix))
        return connect(path, synchronous, page_size), aside


def salvage(aside: Path, db: sqlite3.Connection, metrics: Metrics) -> Salvage:
    """Copy replay marks, downlinks and CRC-clean batches out of the moved-aside file into ``db``."""
    s = Salvage(moved_to=aside)
    try:
        old = sqlite3.connect(aside.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        _failed(s, exc)
        return s
    try:
        try:
            cols = {r[1] for r in old.execute("PRAGMA table_info(nodes)")}
            seen = "seen" if "seen" in cols else "x'ffffffffffffffff'"  # before the window
            table = _DamagedTable(old, "nodes", f"node_id, fcnt, dcnt, {seen}")
            nodes = [r for r in table if _node_ok(r)]
        except sqlite3.DatabaseError as exc:
            _failed(s, exc)
            return s
        logged = _marks(old)
        if table.bad and not nodes and not logged:
            _failed(s, sqlite3.DatabaseError("nodes table unreadable"))
        merged = {r[0]: r for r in nodes}
        merged.update((r[0], r) for r in logged)  # the log is newer, in commit order
        nodes = list(merged.values())
        downlinks: list[tuple[Any, ...]] = []
        try:
            downlinks = [r for r in _DamagedTable(old, "downlinks", "node_id, commands")
                         if type(r[0]) is int and isinstance(r[1], str)]
        except sqlite3.DatabaseError as exc:
            _log.error("event=outbox_salvage_downlinks_failed error=%r", exc)

        def body() -> None:
            db.executemany(
                "INSERT OR REPLACE INTO nodes (node_id, fcnt, dcnt, seen) VALUES (?,?,?,?)",
                nodes)
            db.executemany(
                "INSERT OR REPLACE INTO downlinks (node_id, commands) VALUES (?,?)", downlinks)

        write(db, body, metrics)
        s.nodes, s.downlinks = len(nodes), len(downlinks)
        if table.bad and nodes:
            _log.error("event=outbox_salvage_nodes_partial kept=%d unreadable_stretches=%d",
                       len(nodes), table.bad)
        _batches(s, old, db, metrics)
    finally:
        old.close()
    _log.warning("event=outbox_salvaged from=%s nodes=%d downlinks=%d batches=%d",
                 aside, s.nodes, s.downlinks, s.batches)
    return s


def _marks(old: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Node rows of the old file's marks log, oldest first; none if it has no log."""
    rows: list[tuple[Any, ...]] = []
    try:
        for (blob,) in _DamagedTable(old, "marks", "rows"):
            rows.extend(r for r in unpack_marks(blob) if _node_ok(r))
    except sqlite3.DatabaseError as exc:  # a file from before the log, or unreadable
        if "no such table" not in str(exc):
            _log.error("event=outbox_salvage_marks_failed kept=%d error=%r", len(rows), exc)
    return rows


def _failed(s: Salvage, exc: BaseException) -> None:
    s.failed = True
    _log.error("event=outbox_salvage_failed from=%s error=%r: replay marks lost, frames "
               "captured before now would be accepted again", s.moved_to, exc)


def _batches(s: Salvage, old: sqlite3.Connection, db: sqlite3.Connection, metrics: Metrics) -> None:
    rows = _DamagedTable(old, "batches", "id, priority, frames, created_s, crc, payload")
    chunk: list[tuple[Any, ...]] = []
    size = 0
    bad = 0

    def flush() -> None:
        nonlocal size
        write(db, lambda: db.executemany(
            "INSERT OR IGNORE INTO batches (id, priority, frames, created_s, crc, payload) "
            "VALUES (?,?,?,?,?,?)", chunk), metrics)
        s.batches += len(chunk)
        chunk.clear()
        size = 0

    try:
        for row in rows:
            payload = row[5]
            if not (crc_ok(payload, row[4]) and type(row[0]) is int and type(row[2]) is int):
                bad += 1
                continue
            chunk.append(row)
            size += len(payload)
            if size >= _SALVAGE_CHUNK_BYTES:
                flush()
        if chunk:
            flush()
    except sqlite3.Error as exc:  # the batches table unreadable, or no room: keep what we have
        _log.error("event=outbox_salvage_batches_stopped copied=%d error=%r", s.batches, exc)
    if bad:
        metrics.outbox_corrupt.inc(amount=bad)


def _node_ok(row: tuple[Any, ...]) -> bool:
    """A salvaged node row with sane types: a garbage mark could lock a node out for good."""
    node_id, fcnt, dcnt, seen = row
    return (type(node_id) is int and 0 <= node_id <= 0xFFFFFFFF
            and type(fcnt) is int and 0 <= fcnt <= 0xFFFFFFFF
            and type(dcnt) is int and dcnt >= 0 and isinstance(seen, bytes) and len(seen) <= 8)


class _DamagedTable:
    """Rows of a table in a damaged file, in rowid order, stepping over pages that do not read.

    A seek reads the page holding its rowid, so after a failure the next rowid that reads is
    found by probing forward, then bisecting: a bad page costs its own rows and about twice
    as many seeks. ``bad`` counts the stretches stepped over. Our rowids are >= 0.

    The probes step by half the mean gap between the rowids read so far, so one lands in
    every readable page (a page spans several rows): doubling alone jumped over a readable
    page lying between two bad ones, and the bisection then found the page after it (its
    rows, readable, lost: tests/test_gw_outbox_salvage.py). After ``_LINEAR_PROBES`` probes,
    or with nothing read yet, the steps double, reaching the end of any table in at most
    63 more probes.
    """

    def __init__(self, db: sqlite3.Connection, table: str, cols: str) -> None:
        self._db = db
        self._sql = f"SELECT rowid, {cols} FROM {table} WHERE rowid >= ? ORDER BY rowid"
        self._probe = f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1"
        self.bad = 0
        self.read = 0
        self._first = self._last = 0  # the lowest and highest rowids read

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        start: int | None = 0
        careful = 0  # rows to read one query each: a cursor fails on the row after the one it returns
        while start is not None and start <= _MAX_ROWID:
            try:
                streaming = not careful
                rows: Iterable[tuple[Any, ...]]
                if streaming:
                    rows = self._db.execute(self._sql, (start,))
                else:
                    one = self._db.execute(self._sql + " LIMIT 1", (start,)).fetchone()
                    if one is None:
                        return
                    careful -= 1
                    rows = (one,)
                for row in rows:
                    start = int(row[0]) + 1
                    if not self.read:
                        self._first = start - 1
                    self._last = start - 1
                    self.read += 1
                    yield row[1:]
                if streaming:
                    return
            except sqlite3.DatabaseError as exc:
                corrupt = error_code(exc) == sqlite3.SQLITE_CORRUPT
                if not corrupt and not (self.read or self.bad):
                    raise  # not a database, no such table: nothing here can be read
                if not corrupt:
                    self.bad += 1
                    return
                if careful:  # the row at start itself does not read
                    self.bad += 1
                    start = self._restart(start)
                careful = _CAREFUL_ROWS

    def _ok(self, start: int) -> bool:
        try:
            self._db.execute(self._probe, (start,)).fetchall()
        except sqlite3.DatabaseError:
            return False
        return True

    def _restart(self, failed: int) -> int | None:
        """The smallest rowid above ``failed`` from which the table reads again (or that lies
        past its last row); None if none up to the largest rowid there can be."""
        gap = max(1, (self._last - self._first) // (2 * (self.read - 1))) if self.read > 1 else 0
        step, at = max(gap, 1), failed
        # Bounded: doubling from any step reaches _MAX_ROWID within 64 probes.
        for probes in range(1, _LINEAR_PROBES + 65):  # no probe in (failed, at] reads
            if at >= _MAX_ROWID:
                return None
            step = min(step, _MAX_ROWID - at)
            if self._ok(at + step):
                break
            at += step
            if not gap or probes >= _LINEAR_PROBES:
                step *= 2
        else:
            return None
        lo, hi = at, at + step  # lo does not read (or is failed), hi does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._ok(mid) else (mid, hi)
        return hi
