"""The durable outbox: SQLite in WAL mode, one transaction per batch.

What survives a kill -9 or a power cut is decided here:
- a batch (an encoded SenML pack) is committed together with the replay high-water marks,
  downlink counters and replay windows of the nodes it carries, so after a crash the
  gateway neither forgets a reading it acknowledged nor accepts a frame it already accepted;
- ``synchronous=FULL`` fsyncs the WAL at every commit (one fsync per batch, not per reading).
  ``NORMAL`` survives process crashes but may lose the last commits on power loss;
- a batch leaves only after the broker's PUBACK; deletes are grouped (a lost delete costs a
  duplicate publish, which consumers drop on (node, fcnt), never a lost reading);
- the outbox is bounded in payload bytes: when full the oldest ordinary batches go first,
  alarm batches last, each drop counted.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.metrics import Metrics
from gateway.ratelog import RateLimitedLog

_log = logging.getLogger(__name__)

PRIORITY_ORDINARY: Final = 0
PRIORITY_ALARM: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE TABLE IF NOT EXISTS downlinks (
    node_id INTEGER PRIMARY KEY,
    commands TEXT NOT NULL
);
"""


@dataclass(slots=True, frozen=True)
class StoredBatch:
    batch_id: int
    priority: int
    frames: int
    created_s: float
    payload: bytes


@dataclass(slots=True, frozen=True)
class NodeRow:
    node_id: int
    fcnt: int
    dcnt: int
    seen: bytes  # the replay window below fcnt (gateway/replay.py), 8 bytes little-endian


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


class Outbox:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        metrics: Metrics | None = None,
        synchronous: str = "full",
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.metrics = metrics or Metrics()
        self._listeners: list[Callable[[], None]] = []
        self._acked: set[int] = set()
        self._sizes: dict[int, tuple[int, int, int]] = {}  # id -> (bytes, priority, frames)
        self.bytes = 0
        self._faults = RateLimitedLog(_log)  # a long outage evicts on every commit
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open(synchronous)
        self._scan()

    # -- start-up ---------------------------------------------------------------------

    def _open(self, synchronous: str) -> sqlite3.Connection:
        try:
            db = self._connect(synchronous)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            return db
        except sqlite3.DatabaseError as exc:
            # A file SQLite cannot read at all: keep it for forensics, start afresh, count.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            _log.error("event=outbox_corrupt path=%s error=%r moved_to=%s", self.path, exc, aside)
            self.metrics.outbox_corrupt.inc()
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    p.replace(Path(str(aside) + suffix))
            return self._connect(synchronous)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        db.executescript(_SCHEMA)
        cols = [r[1] for r in db.execute("PRAGMA table_info(nodes)")]
        if "recent" in cols:  # an outbox from before the replay window: strict marks
            db.executescript(
                "ALTER TABLE nodes RENAME COLUMN recent TO seen;"
                "UPDATE nodes SET seen = x'ffffffffffffffff';"
            )
        return db

    def _scan(self) -> None:
        bad: list[int] = []
        for batch_id, priority, frames, crc, payload in self._db.execute(
            "SELECT id, priority, frames, crc, payload FROM batches ORDER BY id"
        ):
            if not isinstance(payload, bytes) or zlib.crc32(payload) != crc:
                bad.append(batch_id)
                continue
            self._sizes[batch_id] = (len(payload), priority, frames)
            self.bytes += len(payload)
        if bad:
            _log.error("event=outbox_corrupt_rows count=%d", len(bad))
            self.metrics.outbox_corrupt.inc(amount=len(bad))
            self._write(lambda: self._db.executemany(
                "DELETE FROM batches WHERE id=?", [(b,) for b in bad]
            ))
        self._gauges()

    def load_nodes(self) -> list[NodeRow]:
        return [NodeRow(*row) for row in self._db.execute(
            "SELECT node_id, fcnt, dcnt, seen FROM nodes"
        )]

    def load_downlinks(self) -> dict[int, str]:
        return dict(self._db.execute("SELECT node_id, commands FROM downlinks").fetchall())

    # -- writes -------------------------------------------------------------------------

    def _write(self, body: Callable[[], object]) -> None:
        before = _proc_wchar()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            body()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.metrics.disk_bytes_written.inc(amount=max(0, _proc_wchar() - before))

    def commit_batch(
        self,
        payload: bytes,
        frames: int,
        priority: int,
        nodes: Iterable[NodeRow] = (),
        downlinks_done: Iterable[int] = (),
    ) -> int:
        """Store one batch and the node state it advances, atomically. Returns the batch id."""
        created = time.time()
        node_rows = [(n.node_id, n.fcnt, n.dcnt, n.seen) for n in nodes]
        done = [(n,) for n in downlinks_done]
        evict = self._evictions(len(payload))
        acked = list(self._acked)
        batch_id = 0

        def body() -> None:
            nonlocal batch_id
            cur = self._db.execute(
                "INSERT INTO batches (priority, frames, created_s, crc, payload) VALUES (?,?,?,?,?)",
                (priority, frames, created, zlib.crc32(payload), payload),
            )
            batch_id = int(cur.lastrowid or 0)
            if node_rows:
                self._db.executemany(
                    "INSERT INTO nodes (node_id, fcnt, dcnt, seen) VALUES (?,?,?,?) "
                    "ON CONFLICT(node_id) DO UPDATE SET fcnt=excluded.fcnt, "
                    "dcnt=excluded.dcnt, seen=excluded.seen",
                    node_rows,
                )
            if done:
                self._db.executemany("DELETE FROM downlinks WHERE node_id=?", done)
            gone = [(b,) for b in evict + acked]
            if gone:
                self._db.executemany("DELETE FROM batches WHERE id=?", gone)

        self._write(body)
        self._acked.difference_update(acked)
        for b in evict:
            nbytes, prio, nframes = self._sizes.pop(b)
            self.bytes -= nbytes
            self.metrics.outbox_dropped_batches.inc("alarm" if prio else "ordinary")
            self.metrics.outbox_dropped_readings.inc(amount=nframes)
        if evict:
            self._faults.log("outbox_full", "event=outbox_full dropped_batches=%d max_bytes=%d",
                             len(evict), self.max_bytes)
        self._sizes[batch_id] = (len(payload), priority, frames)
        self.bytes += len(payload)
        self.metrics.batches.inc()
        self.metrics.readings_committed.inc(amount=frames)
        self._gauges()
        for cb in self._listeners:
            cb()
        return batch_id

    def _evictions(self, incoming: int) -> list[int]:
        """Oldest ordinary batches first, then oldest alarm batches, until incoming fits."""
        excess = self.bytes + incoming - self.max_bytes
        if excess <= 0:
            return []
        out: list[int] = []
        for want in (PRIORITY_ORDINARY, PRIORITY_ALARM):
            for b, (nbytes, prio, _) in self._sizes.items():  # insertion order = id order
                if excess <= 0:
                    return out
                if prio == want:
                    out.append(b)
                    excess -= nbytes
        return out

    def put_downlink(self, node_id: int, commands_json: str) -> None:
        self._write(lambda: self._db.execute(
            "INSERT INTO downlinks (node_id, commands) VALUES (?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET commands=excluded.commands",
            (node_id, commands_json),
        ))

    def ack(self, batch_id: int) -> None:
        """The broker has the batch; the row goes with the next write (or flush_acks)."""
        entry = self._sizes.pop(batch_id, None)
        if entry is None:
            return
        self.bytes -= entry[0]
        self._acked.add(batch_id)
        self._gauges()

    def flush_acks(self) -> None:
        if not self._acked:
            return
        acked = [(b,) for b in self._acked]
        self._write(lambda: self._db.executemany("DELETE FROM batches WHERE id=?", acked))
        self._acked.clear()

    # -- reads ----------------------------------------------------------------------------

    def pending_ids(self) -> list[int]:
        return list(self._sizes)

    def peek(self, after_id: int, limit: int) -> list[StoredBatch]:
        """Waiting batches with id > after_id, oldest first; rows failing their CRC are dropped."""
        out: list[StoredBatch] = []
        for batch_id, priority, frames, created, crc, payload in self._db.execute(
            "SELECT id, priority, frames, created_s, crc, payload FROM batches "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit + len(self._acked)),
        ):
            if batch_id not in self._sizes:
                continue  # acked, delete pending
            if zlib.crc32(payload) != crc:
                self.metrics.outbox_corrupt.inc()
                self.ack(batch_id)
                continue
            out.append(StoredBatch(batch_id, priority, frames, created, payload))
            if len(out) >= limit:
                break
        return out

    @property
    def depth(self) -> int:
        return len(self._sizes)

    def add_listener(self, cb: Callable[[], None]) -> None:
        self._listeners.append(cb)

    def _gauges(self) -> None:
        self.metrics.outbox_depth.set(len(self._sizes))
        self.metrics.outbox_bytes.set(self.bytes)

    def close(self) -> None:
        try:
            self.flush_acks()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
