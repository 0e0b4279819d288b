"""The durable outbox: SQLite in WAL mode, one transaction per batch.

What survives a kill -9 or a power cut is decided here:
- a batch (an encoded SenML pack) is committed together with the replay high-water marks,
  downlink counters and replay windows of the nodes it carries, so after a crash the
  gateway neither forgets a reading it acknowledged nor accepts a frame it already accepted.
  Those node rows are appended, packed, to the ``marks`` log in that transaction; the log is
  folded into the ``nodes`` table once it holds a few times as many rows as there are nodes
  (inside a batch's transaction too) and at close. A batch of 100 frames from 100 nodes would
  otherwise rewrite nearly every page of ``nodes``: 25 KB of SD card for 10 KB of readings;
- ``synchronous=FULL`` fsyncs the WAL at every commit (one fsync per batch, not per reading).
  ``NORMAL`` survives process crashes but may lose the last commits on power loss;
- a batch leaves only after the broker's PUBACK. Its delete rides with the next batch commit,
  or ``flush_acks`` writes it once 256 deletes wait or the oldest waited ``ack_flush_s``: a
  quiet site must not pay a second SD-card commit per batch. A delete lost to a crash costs a
  duplicate publish, which consumers drop on (node, fcnt), never a lost reading;
- the outbox is bounded by ``max_bytes`` of database: each batch counts its payload plus
  SQLite's per-row and page-packing overhead (``stored_bytes``), so tiny batches of a quiet
  site cannot outgrow the configured size. When full the oldest ordinary batches go first,
  alarm batches last, each drop counted. A disk that fills first (SQLITE_FULL) is handled the
  same way, once per commit, before ``OutboxFull`` is raised;
- a file SQLite cannot read is moved aside and what still reads is copied out of it: replay
  marks first (losing them would let captured old frames in again), downlinks, and batches
  whose CRC verifies;
- the outbox numbers batches itself (no AUTOINCREMENT: its ``sqlite_sequence`` page would be
  one more page written per commit), and the gateway creates new files with 1 KiB pages, so a
  lone frame's commit writes two small pages, not three of 4 KiB.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sqlite3
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from gateway.errors import OutboxFull
from gateway.metrics import Metrics
from gateway.ratelog import RateLimitedLog

_log = logging.getLogger(__name__)

PRIORITY_ORDINARY: Final = 0
PRIORITY_ALARM: Final = 1
_DEAD: Final = -1  # priority of a row no longer waiting (acked or evicted)

ACK_FLUSH_COUNT: Final = 256  # deletes that justify a write of their own
_MAX_ROWID: Final = (1 << 63) - 1
_CAREFUL_ROWS: Final = 64  # read one by one after damage, then stream again
_SALVAGE_CHUNK_BYTES: Final = 4 << 20  # one transaction per 4 MiB: the WAL can checkpoint
# Record header and the non-payload columns (priority, frames, created_s, crc), then the cell's
# payload-size and rowid varints: measured within 1 % of the file for 20 B .. 16 KiB payloads.
_RECORD_OVERHEAD: Final = 24
_CELL_HEADER: Final = 5
# Pages of a new file the gateway creates: a lone frame's commit writes whole pages, and most
# of a 4 KiB page would be empty. A 10 KB pack costs the same bytes either way.
SD_PAGE_SIZE: Final = 1024
# A node row in the marks log: node id, fcnt, dcnt (4 bytes in an ack too), the replay
# window's length and the window, zero-padded to 8 bytes (fixed size: unpacked in C).
_MARK: Final = struct.Struct("<IIIB8s")
# The log is folded into ``nodes`` once it holds this many rows, or _FOLD_PER_NODE per node
# row in ``nodes`` if that is more: a fold rewrites the table once for several rows a node
# (1,000 nodes: a fold of ~5 ms CPU and ~25 KB every ~80 batches of 100; the log <= 180 KB).
_FOLD_MIN_ROWS: Final = 8192
_FOLD_PER_NODE: Final = 8

# Files created before: ``batches`` keeps its AUTOINCREMENT (the ids given here satisfy it).
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    created_s REAL NOT NULL,
    crc INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    fcnt INTEGER NOT NULL,
    dcnt INTEGER NOT NULL,
    seen BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY,
    rows BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS downlinks (
    node_id INTEGER PRIMARY KEY,
    commands TEXT NOT NULL
);
"""
_UPSERT_NODES: Final = (
    "INSERT INTO nodes (node_id, fcnt, dcnt, seen) VALUES (?,?,?,?) "
    "ON CONFLICT(node_id) DO UPDATE SET fcnt=excluded.fcnt, dcnt=excluded.dcnt, seen=excluded.seen"
)


@dataclass(slots=True, frozen=True)
class StoredBatch:
    batch_id: int
    priority: int
    frames: int
    created_s: float
    payload: bytes


class NodeRow(NamedTuple):
    """A node's committed replay state (a tuple: one per node of every batch, packed as is)."""

    node_id: int
    fcnt: int
    dcnt: int
    seen: bytes  # the replay window below fcnt (gateway/replay.py), 8 bytes little-endian


def _pack_marks(nodes: Iterable[NodeRow]) -> bytes:
    return b"".join([_MARK.pack(node_id, fcnt, dcnt, len(seen), seen) for node_id, fcnt, dcnt, seen in nodes])


def _unpack_marks(blob: object) -> list[tuple[int, int, int, bytes]]:
    """The node rows of one marks-log row; a damaged tail is ignored."""
    if not isinstance(blob, bytes):
        return []
    whole = blob[: len(blob) - len(blob) % _MARK.size]
    return [(node_id, fcnt, dcnt, seen[:n]) for node_id, fcnt, dcnt, n, seen in _MARK.iter_unpack(whole)]


@dataclass(slots=True)
class Salvage:
    """What was copied out of a database file moved aside at start-up."""

    moved_to: Path | None = None
    nodes: int = 0
    downlinks: int = 0
    batches: int = 0
    failed: bool = False  # nothing could be read: every node's replay mark is lost


def _proc_wchar() -> int:
    """Bytes this process handed to write(2); around a commit that is SQLite's writes."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary of an extended code


# What says "this file cannot be read", as opposed to locked, unopenable or a full disk.
_UNREADABLE: Final = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class _QuickCheckFailed(Exception):
    pass


def stored_bytes(payload_len: int, page_size: int = 4096) -> int:
    """Estimated bytes a batch row takes in the file (SQLite file format, "B-tree pages").

    A leaf page holds whole cells only, so a 1 KiB row costs a third of a page; a row above
    the local limit keeps a head in its leaf and spills the rest into whole overflow pages.
    """
    u = page_size
    p = payload_len + _RECORD_OVERHEAD
    max_local = u - 35
    if p <= max_local:
        per_page = (u - 8) // (p + _CELL_HEADER + 2)  # +2: the cell pointer
        return -(-u // per_page)
    min_local = (u - 12) * 32 // 255 - 23
    local = min_local + (p - min_local) % (u - 4)
    if local > max_local:
        local = min_local
    overflow_pages = -(-(p - local) // (u - 4))
    return overflow_pages * u + (local + 4 + _CELL_HEADER + 2) * u // (u - 8)


class _Pending:
    """Batches waiting for their PUBACK, in id order: 17 bytes a row in parallel arrays.

    A tuple per row in a dict cost ~150 B. Acks and evictions only mark a row dead; the dead
    are squeezed out once they outnumber the living, so lookups stay O(log n) by bisection.
    """

    __slots__ = ("_cursor", "_head", "frames", "ids", "live", "nbytes", "prio")

    def __init__(self) -> None:
        self.ids = array("q")
        self.nbytes = array("i")  # stored_bytes of the row
        self.frames = array("i")
        self.prio = array("b")  # PRIORITY_* or _DEAD
        self.live = 0
        self._head = 0  # no live row sits before this index (acks and evictions take the oldest)
        self._cursor = [0, 0]  # per priority: no live row of it sits before this index

    def append(self, batch_id: int, nbytes: int, priority: int, frames: int) -> None:
        if self.ids and batch_id <= self.ids[-1]:
            raise ValueError(f"batch ids must grow: {batch_id} after {self.ids[-1]}")
        self.ids.append(batch_id)
        self.nbytes.append(nbytes)
        self.frames.append(frames)
        self.prio.append(1 if priority else 0)
        self.live += 1

    def _index(self, batch_id: int) -> int:
        i = bisect.bisect_left(self.ids, batch_id)
        if i < len(self.ids) and self.ids[i] == batch_id and self.prio[i] != _DEAD:
            return i
        return -1

    def __contains__(self, batch_id: int) -> bool:
        return self._index(batch_id) >= 0

    def remove(self, batch_id: int) -> tuple[int, int, int] | None:
        """(stored bytes, priority, frames) of a waiting row, now gone; None if not waiting."""
        i = self._index(batch_id)
        if i < 0:
            return None
        out = (self.nbytes[i], self.prio[i], self.frames[i])
        self.prio[i] = _DEAD
        self.live -= 1
        if len(self.ids) - self.live > max(self.live, 1024):
            self._compact()
        elif i == self._head:
            n = len(self.ids)
            while self._head < n and self.prio[self._head] == _DEAD:
                self._head += 1
        return out

    def _compact(self) -> None:
        keep = bytes(p != _DEAD for p in self.prio)  # one byte a row while it runs
        self.ids = array("q", itertools.compress(self.ids, keep))
        self.nbytes = array("i", itertools.compress(self.nbytes, keep))
        self.frames = array("i", itertools.compress(self.frames, keep))
        self.prio = array("b", itertools.compress(self.prio, keep))
        self._head = 0
        self._cursor = [0, 0]

    def oldest(self, excess: int) -> list[int]:
        """Ids to evict for ``excess`` bytes: oldest ordinary first, then oldest alarms.

        A larger excess gives a longer list with the smaller one as its head.
        """
        out: list[int] = []
        n = len(self.ids)
        for want in (PRIORITY_ORDINARY, PRIORITY_ALARM):
            i = max(self._cursor[want], self._head)
            while i < n and self.prio[i] != want:
                i += 1
            self._cursor[want] = i
            while excess > 0 and i < n:
                if self.prio[i] == want:
                    out.append(self.ids[i])
                    excess -= self.nbytes[i]
                i += 1
        return out

    def after(self, after_id: int, limit: int) -> list[int]:
        """Up to ``limit`` waiting ids above ``after_id``, in order."""
        i = max(bisect.bisect_right(self.ids, after_id), self._head)
        out: list[int] = []
        ids, prio, n = self.ids, self.prio, len(self.ids)
        while i < n and len(out) < limit:
            if prio[i] != _DEAD:
                out.append(ids[i])
            i += 1
        return out

    def all_ids(self) -> list[int]:
        return list(itertools.compress(self.ids, (p != _DEAD for p in self.prio)))


class _DamagedTable:
    """Rows of a table in a damaged file, in rowid order, stepping over pages that do not read.

    A seek reads the page holding its rowid, so after a failure the next rowid that reads is
    found by doubling then bisecting: a bad page costs its own rows and a few dozen seeks.
    ``bad`` counts the stretches stepped over. Our rowids are >= 0.
    """

    def __init__(self, db: sqlite3.Connection, table: str, cols: str) -> None:
        self._db = db
        self._sql = f"SELECT rowid, {cols} FROM {table} WHERE rowid >= ? ORDER BY rowid"
        self._probe = f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1"
        self.bad = 0
        self.read = 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        start: int | None = 0
        careful = 0  # rows to read one query each: a cursor fails on the row after the one it returns
        while start is not None:
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
                    self.read += 1
                    yield row[1:]
                if streaming:
                    return
            except sqlite3.DatabaseError as exc:
                corrupt = _code(exc) == sqlite3.SQLITE_CORRUPT
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
        """The smallest rowid above ``failed`` from which the table reads again."""
        step = 1
        while True:
            if failed + step > _MAX_ROWID:
                return None
            if self._ok(failed + step):
                break
            step *= 2
        lo, hi = failed + step // 2, failed + step  # lo does not read (or is failed), hi does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._ok(mid) else (mid, hi)
        return hi


class Outbox:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        metrics: Metrics | None = None,
        synchronous: str = "full",
        ack_flush_s: float = 30.0,
        page_size: int | None = None,
    ) -> None:
        """``page_size``: of a new file (SQLite's 4096 when None); an existing file keeps its own."""
        self.path = path
        self.max_bytes = max_bytes
        self.ack_flush_s = ack_flush_s
        self.metrics = metrics or Metrics()
        self.salvage = Salvage()
        self._listeners: list[Callable[[], None]] = []
        self._acked: set[int] = set()
        self._acked_since_s = 0.0  # monotonic time of the oldest delete waiting in _acked
        self._pending = _Pending()
        self.bytes = 0  # stored_bytes of the waiting batches: what max_bytes bounds
        self._faults = RateLimitedLog(_log)  # a long outage evicts on every commit
        self._next_id = 1
        self._log_rows = 0  # node rows in the marks log
        self._fold_at = _FOLD_MIN_ROWS
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db, aside = self._open(synchronous, page_size)
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        if aside is not None:
            self._salvage(aside)
        self._scan()

    # -- start-up ---------------------------------------------------------------------

    def _open(self, synchronous: str, page_size: int | None) -> tuple[sqlite3.Connection, Path | None]:
        try:
            db = self._connect(synchronous, page_size)
            try:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise _QuickCheckFailed("quick_check failed")
            except BaseException:
                db.close()
                raise
            return db, None
        except (sqlite3.DatabaseError, _QuickCheckFailed) as exc:
            # A locked file, a full disk or bad permissions are not corruption: fail loudly.
            if isinstance(exc, sqlite3.DatabaseError) and _code(exc) not in _UNREADABLE:
                raise
            # Keep the file for forensics and salvage, start afresh, count.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            _log.error("event=outbox_corrupt path=%s error=%r moved_to=%s", self.path, exc, aside)
            self.metrics.outbox_corrupt.inc()
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    p.replace(Path(str(aside) + suffix))
            return self._connect(synchronous, page_size), aside

    def _connect(self, synchronous: str, page_size: int | None) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if page_size is not None:  # only a file without tables takes it, so before WAL mode
                db.execute(f"PRAGMA page_size={int(page_size)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            # Debian (so Raspberry Pi OS) builds SQLite with SECURE_DELETE: each published batch's
            # pages would be zeroed, a second write of every pack. FAST zeroes only pages a commit
            # writes anyway; the outbox holds no secrets (keys live in the registry).
            db.execute("PRAGMA secure_delete=FAST")
            db.executescript(_SCHEMA)
            cols = [r[1] for r in db.execute("PRAGMA table_info(nodes)")]
            if "recent" in cols:  # an outbox from before the replay window: strict marks
                db.executescript(
                    "ALTER TABLE nodes RENAME COLUMN recent TO seen;"
                    "UPDATE nodes SET seen = x'ffffffffffffffff';"
                )
        except BaseException:
            db.close()
            raise
        return db

    def _salvage(self, aside: Path) -> None:
        """Copy replay marks, downlinks and CRC-clean batches out of the moved-aside file."""
        s = self.salvage
        s.moved_to = aside
        try:
            old = sqlite3.connect(aside.resolve().as_uri() + "?mode=ro", uri=True)
        except sqlite3.Error as exc:
            self._salvage_failed(exc)
            return
        try:
            try:
                cols = {r[1] for r in old.execute("PRAGMA table_info(nodes)")}
                seen = "seen" if "seen" in cols else "x'ffffffffffffffff'"  # before the window
                table = _DamagedTable(old, "nodes", f"node_id, fcnt, dcnt, {seen}")
                nodes = [r for r in table if _node_ok(r)]
            except sqlite3.DatabaseError as exc:
                self._salvage_failed(exc)
                return
            logged = self._salvage_marks(old)
            if table.bad and not nodes and not logged:
                self._salvage_failed(sqlite3.DatabaseError("nodes table unreadable"))
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
                self._db.executemany(
                    "INSERT OR REPLACE INTO nodes (node_id, fcnt, dcnt, seen) VALUES (?,?,?,?)",
                    nodes)
                self._db.executemany(
                    "INSERT OR REPLACE INTO downlinks (node_id, commands) VALUES (?,?)", downlinks)

            self._write(body)
            s.nodes, s.downlinks = len(nodes), len(downlinks)
            if table.bad and nodes:
                _log.error("event=outbox_salvage_nodes_partial kept=%d unreadable_stretches=%d",
                           len(nodes), table.bad)
            self._salvage_batches(old)
        finally:
            old.close()
        _log.warning("event=outbox_salvaged from=%s nodes=%d downlinks=%d batches=%d",
                     aside, s.nodes, s.downlinks, s.batches)

    def _salvage_marks(self, old: sqlite3.Connection) -> list[tuple[Any, ...]]:
        """Node rows of the old file's marks log, oldest first; none if it has no log."""
        rows: list[tuple[Any, ...]] = []
        try:
            for (blob,) in _DamagedTable(old, "marks", "rows"):
                rows.extend(r for r in _unpack_marks(blob) if _node_ok(r))
        except sqlite3.DatabaseError as exc:  # a file from before the log, or unreadable
            if "no such table" not in str(exc):
                _log.error("event=outbox_salvage_marks_failed kept=%d error=%r", len(rows), exc)
        return rows

    def _salvage_failed(self, exc: BaseException) -> None:
        self.salvage.failed = True
        _log.error("event=outbox_salvage_failed from=%s error=%r: replay marks lost, frames "
                   "captured before now would be accepted again", self.salvage.moved_to, exc)

    def _salvage_batches(self, old: sqlite3.Connection) -> None:
        rows = _DamagedTable(old, "batches", "id, priority, frames, created_s, crc, payload")
        chunk: list[tuple[Any, ...]] = []
        size = 0
        bad = 0

        def flush() -> None:
            nonlocal size
            self._write(lambda: self._db.executemany(
                "INSERT OR IGNORE INTO batches (id, priority, frames, created_s, crc, payload) "
                "VALUES (?,?,?,?,?,?)", chunk))
            self.salvage.batches += len(chunk)
            chunk.clear()
            size = 0

        try:
            for row in rows:
                payload = row[5]
                if not (isinstance(payload, bytes) and zlib.crc32(payload) == row[4]
                        and type(row[0]) is int and type(row[2]) is int):
                    bad += 1
                    continue
                chunk.append(row)
                size += len(payload)
                if size >= _SALVAGE_CHUNK_BYTES:
                    flush()
            if chunk:
                flush()
        except sqlite3.Error as exc:  # the batches table unreadable, or no room: keep what we have
            _log.error("event=outbox_salvage_batches_stopped copied=%d error=%r",
                       self.salvage.batches, exc)
        if bad:
            self.metrics.outbox_corrupt.inc(amount=bad)

    def _scan(self) -> None:
        bad: list[int] = []
        last_id = 0
        for batch_id, priority, frames, crc, payload in self._db.execute(
            "SELECT id, priority, frames, crc, payload FROM batches ORDER BY id"
        ):
            last_id = batch_id
            if not isinstance(payload, bytes) or zlib.crc32(payload) != crc:
                bad.append(batch_id)
                continue
            nbytes = self._stored(len(payload))
            self._pending.append(batch_id, nbytes, priority, frames)
            self.bytes += nbytes
        # Ids keep growing, also past an AUTOINCREMENT counter of a file from before.
        with_seq = self._db.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'").fetchone()
        if with_seq:
            seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
            last_id = max(last_id, int(seq[0]) if seq else 0)
        self._next_id = last_id + 1
        logged = self._db.execute("SELECT coalesce(sum(length(rows)), 0) FROM marks").fetchone()[0]
        self._log_rows = int(logged) // _MARK.size
        self._set_fold_at()
        if bad:
            _log.error("event=outbox_corrupt_rows count=%d", len(bad))
            self.metrics.outbox_corrupt.inc(amount=len(bad))
            self._write(lambda: self._db.executemany(
                "DELETE FROM batches WHERE id=?", [(b,) for b in bad]
            ))
        self._gauges()

    def load_nodes(self) -> list[NodeRow]:
        """Every node's committed state: the ``nodes`` table, then the marks log in order."""
        rows: dict[int, tuple[Any, ...]] = {
            r[0]: r for r in self._db.execute("SELECT node_id, fcnt, dcnt, seen FROM nodes")}
        for (blob,) in self._db.execute("SELECT rows FROM marks ORDER BY id"):
            rows.update((r[0], r) for r in _unpack_marks(blob))
        return [NodeRow(*rows[n]) for n in sorted(rows)]

    def load_downlinks(self) -> dict[int, str]:
        return dict(self._db.execute("SELECT node_id, commands FROM downlinks").fetchall())

    # -- writes -------------------------------------------------------------------------

    def _stored(self, payload_len: int) -> int:
        return stored_bytes(payload_len, self._page_size)

    def _set_fold_at(self) -> None:
        nodes = int(self._db.execute("SELECT count(*) FROM nodes").fetchone()[0])
        self._fold_at = max(_FOLD_MIN_ROWS, _FOLD_PER_NODE * nodes)

    def _fold(self) -> None:
        """Inside a transaction: the latest row of each logged node into ``nodes``, log emptied."""
        latest: dict[int, tuple[int, int, int, bytes]] = {}
        for (blob,) in self._db.execute("SELECT rows FROM marks ORDER BY id"):
            latest.update((r[0], r) for r in _unpack_marks(blob))
        self._db.executemany(_UPSERT_NODES, latest.values())
        self._db.execute("DELETE FROM marks")

    def _write(self, body: Callable[[], object]) -> None:
        before = _proc_wchar()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                body()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL may have rolled it back already
                    self._db.execute("ROLLBACK")
                raise
        finally:
            self.metrics.disk_bytes_written.inc(amount=max(0, _proc_wchar() - before))

    def commit_batch(
        self,
        payload: bytes,
        frames: int,
        priority: int,
        nodes: Iterable[NodeRow] = (),
        downlinks_done: Iterable[int] = (),
    ) -> int:
        """Store one batch and the node state it advances, atomically. Returns the batch id.

        Raises ``OutboxFull`` when the disk is full even after evicting old batches; nothing of
        this batch (nor its node state) is then stored.
        """
        created = time.time()
        size = self._stored(len(payload))
        # One packed log row instead of an upsert per node (see the module docstring).
        node_rows = list(nodes)
        marks = _pack_marks(node_rows)
        logged = len(node_rows)
        fold = logged > 0 and self._log_rows + logged >= self._fold_at
        done = [(n,) for n in downlinks_done]
        excess = self.bytes + size - self.max_bytes
        evict = self._pending.oldest(excess)
        acked = sorted(self._acked)
        batch_id = self._next_id

        def body() -> None:
            gone = [(b,) for b in evict + acked]  # first: a full disk needs their pages
            if gone:
                self._db.executemany("DELETE FROM batches WHERE id=?", gone)
            self._db.execute(
                "INSERT INTO batches (id, priority, frames, created_s, crc, payload) VALUES (?,?,?,?,?,?)",
                (batch_id, priority, frames, created, zlib.crc32(payload), payload),
            )
            if marks:
                self._db.execute("INSERT INTO marks (rows) VALUES (?)", (marks,))
                if fold:
                    self._fold()
            if done:
                self._db.executemany("DELETE FROM downlinks WHERE node_id=?", done)

        try:
            self._write(body)
        except sqlite3.OperationalError as exc:
            if _code(exc) != sqlite3.SQLITE_FULL:
                raise
            # The disk filled before max_bytes did: free twice this batch (and a page's slack)
            # from the oldest batches, in the same order as for max_bytes, and try once more.
            more = self._pending.oldest(max(excess, 0) + 2 * size + 2 * self._page_size)
            if len(more) == len(evict):
                self._disk_full(frames, 0)
                raise OutboxFull(frames, "disk full, nothing left to evict") from exc
            evict = more
            try:
                self._write(body)
            except sqlite3.OperationalError as exc2:
                if _code(exc2) != sqlite3.SQLITE_FULL:
                    raise
                self._disk_full(frames, 0)
                raise OutboxFull(frames, f"disk full after evicting {len(evict)} batches") from exc2
            self._disk_full(0, len(evict))
        self._next_id = batch_id + 1
        if fold:
            self._log_rows = 0
            self._set_fold_at()
        else:
            self._log_rows += logged
        self._acked.difference_update(acked)
        for b in evict:
            entry = self._pending.remove(b)
            assert entry is not None  # chosen among the waiting, removed only here
            nbytes, prio, nframes = entry
            self.bytes -= nbytes
            self.metrics.outbox_dropped_batches.inc("alarm" if prio else "ordinary")
            self.metrics.outbox_dropped_readings.inc(amount=nframes)
        if evict:
            self._faults.log("outbox_full", "event=outbox_full dropped_batches=%d max_bytes=%d",
                             len(evict), self.max_bytes)
        self._pending.append(batch_id, size, priority, frames)
        self.bytes += size
        self.metrics.batches.inc()
        self.metrics.readings_committed.inc(amount=frames)
        self._gauges()
        for cb in self._listeners:
            cb()
        return batch_id

    def _disk_full(self, frames_lost: int, evicted: int) -> None:
        self._faults.log("disk_full", "event=outbox_disk_full path=%s evicted=%d frames_lost=%d",
                         self.path, evicted, frames_lost)

    def put_downlink(self, node_id: int, commands_json: str) -> None:
        """Persist a node's pending commands; ``OutboxFull`` if the disk has no room."""
        try:
            self._write(lambda: self._db.execute(
                "INSERT INTO downlinks (node_id, commands) VALUES (?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET commands=excluded.commands",
                (node_id, commands_json),
            ))
        except sqlite3.OperationalError as exc:
            if _code(exc) != sqlite3.SQLITE_FULL:
                raise
            raise OutboxFull(0, f"downlink for node {node_id:08x} not stored") from exc

    def ack(self, batch_id: int) -> None:
        """The broker has the batch; the row goes with the next commit (or flush_acks)."""
        entry = self._pending.remove(batch_id)
        if entry is None:
            return
        self.bytes -= entry[0]
        if not self._acked:
            self._acked_since_s = time.monotonic()
        self._acked.add(batch_id)
        self._gauges()

    def flush_acks(self, force: bool = False) -> None:
        """Delete acked rows once enough wait, or the oldest waited ``ack_flush_s``; cheap
        otherwise, so it can be called every second. A failed delete is retried later."""
        if not self._acked:
            return
        if (not force and len(self._acked) < ACK_FLUSH_COUNT
                and time.monotonic() - self._acked_since_s < self.ack_flush_s):
            return
        acked = sorted(self._acked)
        try:
            self._write(lambda: self._db.executemany(
                "DELETE FROM batches WHERE id=?", [(b,) for b in acked]))
        except sqlite3.OperationalError as exc:  # disk trouble: a later flush or commit retries
            self._faults.log("ack_flush_failed", "event=outbox_ack_flush_failed rows=%d error=%r",
                             len(acked), exc)
            return
        self._acked.difference_update(acked)

    # -- reads ----------------------------------------------------------------------------

    def pending_ids(self) -> list[int]:
        return self._pending.all_ids()

    def peek(self, after_id: int, limit: int) -> list[StoredBatch]:
        """Waiting batches with id > after_id, oldest first; rows failing their CRC are dropped.

        The ids come from memory, so rows acked but not yet deleted are not read from disk.
        """
        out: list[StoredBatch] = []
        while len(out) < limit:
            ids = self._pending.after(after_id, limit - len(out))
            if not ids:
                break
            for batch_id, priority, frames, created, crc, payload in self._db.execute(
                "SELECT id, priority, frames, created_s, crc, payload FROM batches "
                "WHERE id >= ? AND id <= ? ORDER BY id",
                (ids[0], ids[-1]),
            ):
                if batch_id not in self._pending:
                    continue  # acked out of order, delete pending
                if zlib.crc32(payload) != crc:
                    self.metrics.outbox_corrupt.inc()
                    self.ack(batch_id)
                    continue
                out.append(StoredBatch(batch_id, priority, frames, created, payload))
            after_id = ids[-1]
        return out

    @property
    def depth(self) -> int:
        return self._pending.live

    def add_listener(self, cb: Callable[[], None]) -> None:
        self._listeners.append(cb)

    def _gauges(self) -> None:
        self.metrics.outbox_depth.set(self._pending.live)
        self.metrics.outbox_bytes.set(self.bytes)

    def close(self) -> None:
        try:
            self.flush_acks(force=True)
            if self._log_rows:
                try:  # a closed file holds every mark in ``nodes``; the log would do too
                    self._write(self._fold)
                    self._log_rows = 0
                except sqlite3.OperationalError as exc:
                    _log.warning("event=outbox_marks_not_folded rows=%d error=%r", self._log_rows, exc)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()


def _node_ok(row: tuple[Any, ...]) -> bool:
    """A salvaged node row with sane types: a garbage mark could lock a node out for good."""
    node_id, fcnt, dcnt, seen = row
    return (type(node_id) is int and 0 <= node_id <= 0xFFFFFFFF
            and type(fcnt) is int and 0 <= fcnt <= 0xFFFFFFFF
            and type(dcnt) is int and dcnt >= 0 and isinstance(seen, bytes) and len(seen) <= 8)
