"""The outbox's path in one sitting: open, commit a batch, ack, peek, close.

A batch, its node rows (``_marks``) and the evictions it forces go in one transaction
(``_sqlite.write``); the index of what waits (``_pending``) and the byte count (``_sizing``)
change only after that transaction has committed, so a failed commit leaves the outbox as it
was. The package docstring holds the durability contract.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.errors import OutboxFull
from gateway.flow import NodeRow
from gateway.metrics import Metrics
from gateway.outbox._deflate import crc_ok, load_pack, store_pack
from gateway.outbox._marks import MarksLog, load_nodes, pack_marks
from gateway.outbox._pending import Pending
from gateway.outbox._salvage import Salvage, open_or_move_aside, salvage
from gateway.outbox._sizing import stored_bytes
from gateway.outbox._sqlite import error_code, write
from gateway.outbox._staging import StagedFrame, StagingJournal
from gateway.ratelog import RateLimitedLog

_log = logging.getLogger("gateway.outbox")

ACK_FLUSH_COUNT: Final = 256  # deletes that justify a write of their own


@dataclass(slots=True, frozen=True)
class StoredBatch:
    batch_id: int
    priority: int
    frames: int
    created_s: float
    payload: bytes


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
        self._pending = Pending()
        self.bytes = 0  # stored_bytes of the waiting batches: what max_bytes bounds
        self._faults = RateLimitedLog(_log)  # a long outage evicts on every commit
        self._next_id = 1
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db, aside = open_or_move_aside(path, synchronous, page_size, self.metrics)
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        if aside is not None:
            self.salvage = salvage(aside, self._db, self.metrics)
        self._marks = MarksLog(self._db)
        self._staging = StagingJournal(path.with_name(path.name + "-staged"), synchronous == "full")
        self._scan()

    def _scan(self) -> None:
        """The index of waiting batches from the file; rows failing their CRC deleted, counted."""
        bad: list[int] = []
        last_id = 0
        for batch_id, priority, frames, crc, payload in self._db.execute(
            "SELECT id, priority, frames, crc, payload FROM batches ORDER BY id"
        ):
            last_id = batch_id
            if not crc_ok(payload, crc):
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
        if bad:
            _log.error("event=outbox_corrupt_rows count=%d", len(bad))
            self.metrics.outbox_corrupt.inc(amount=len(bad))
            self._write(lambda: self._db.executemany(
                "DELETE FROM batches WHERE id=?", [(b,) for b in bad]
            ))
        self._gauges()

    def load_nodes(self) -> list[NodeRow]:
        """Every node's committed state: the ``nodes`` table, then the marks log in order."""
        return load_nodes(self._db)

    def load_staged(self) -> list[StagedFrame]:
        """What the staging journal held at open (a process that stopped before the batch
        closed), in order; some may be in a batch already: their counters say (``_staging``)."""
        return list(self._staging.frames)

    def load_downlinks(self) -> dict[int, str]:
        return dict(self._db.execute("SELECT node_id, commands FROM downlinks").fetchall())

    # -- writes -------------------------------------------------------------------------

    def _stored(self, payload_len: int) -> int:
        return stored_bytes(payload_len, self._page_size)

    def _write(self, body: Callable[[], object]) -> None:
        write(self._db, body, self.metrics)

    def commit_batch(
        self,
        payload: bytes,
        frames: int,
        priority: int,
        nodes: Iterable[NodeRow] = (),
        downlinks_done: Iterable[int] = (),
        unstage: bool = False,
    ) -> int:
        """Store one batch and the node state it advances, atomically. Returns the batch id.
        ``unstage``: the batch holds every frame staged so far (``stage``); the journal is
        emptied once it is committed.

        Raises ``OutboxFull`` when the disk is full even after evicting old batches; nothing of
        this batch (nor its node state) is then stored.
        """
        created = time.time()
        stored, crc = store_pack(payload)
        size = self._stored(len(stored))
        # One packed log row instead of an upsert per node (see gateway/outbox/_marks.py).
        node_rows = list(nodes)
        marks = pack_marks(node_rows)
        logged = len(node_rows)
        fold = self._marks.due(logged)
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
                (batch_id, priority, frames, created, crc, stored),
            )
            if marks:
                self._marks.append(marks, fold)
            if done:
                self._db.executemany("DELETE FROM downlinks WHERE node_id=?", done)

        try:
            self._write(body)
        except sqlite3.OperationalError as exc:
            if error_code(exc) != sqlite3.SQLITE_FULL:
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
                if error_code(exc2) != sqlite3.SQLITE_FULL:
                    raise
                self._disk_full(frames, 0)
                raise OutboxFull(frames, f"disk full after evicting {len(evict)} batches") from exc2
            self._disk_full(0, len(evict))
        self._next_id = batch_id + 1
        if unstage:
            self.clear_staged()
        self._marks.committed(logged, fold)
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

    def stage(self, frames: list[StagedFrame]) -> None:
        """Append frames of a batch that is still open to the staging journal: on disk when
        this returns (``synchronous = "full"``). Raises ``OSError`` (a full disk included)."""
        self.metrics.disk_bytes_written.inc(amount=self._staging.append(frames))
        self.metrics.staging_commits.inc()

    def clear_staged(self) -> None:
        """Empty the staging journal (what it held is in a committed batch): no write."""
        self._staging.clear()

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
            if error_code(exc) != sqlite3.SQLITE_FULL:
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
                pack = load_pack(payload, crc)
                if pack is None:
                    self.metrics.outbox_corrupt.inc()
                    self.ack(batch_id)
                    continue
                out.append(StoredBatch(batch_id, priority, frames, created, pack))
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
            if self._marks.rows:
                try:  # a closed file holds every mark in ``nodes``; the log would do too
                    self._write(self._marks.fold)
                    self._marks.rows = 0
                except sqlite3.OperationalError as exc:
                    _log.warning("event=outbox_marks_not_folded rows=%d error=%r", self._marks.rows, exc)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._staging.close()
            self._db.close()
