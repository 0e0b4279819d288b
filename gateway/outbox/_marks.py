"""The replay marks: each node's committed (fcnt, dcnt, replay window), logged with its batch.

A batch's node rows are appended, packed, as one row of the ``marks`` log in the batch's own
transaction; the log is folded into the ``nodes`` table (the latest row of each node) once it
holds ``FOLD_MIN_ROWS`` rows, or ``FOLD_PER_NODE`` per row of ``nodes`` if that is more, and at
close (why a log and not an upsert per node: the package docstring). A node's state is its
``nodes`` row overlaid by the log in order (``load_nodes``).
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Iterable
from typing import Any, Final

from gateway.flow import NodeRow
from gateway.outbox._deflate import load_marks, store_marks

# A node row in the marks log: node id, fcnt, dcnt (4 bytes in an ack too), the replay
# window's length and the window, zero-padded to 8 bytes (fixed size: unpacked in C).
MARK: Final = struct.Struct("<IIIB8s")
# A fold rewrites the table once for several rows a node (1,000 nodes: a fold of ~5 ms CPU
# and ~25 KB every ~80 batches of 100; the log <= 180 KB). Read at each use (tests lower them).
FOLD_MIN_ROWS = 8192
FOLD_PER_NODE = 8

_UPSERT_NODES: Final = (
    "INSERT INTO nodes (node_id, fcnt, dcnt, seen) VALUES (?,?,?,?) "
    "ON CONFLICT(node_id) DO UPDATE SET fcnt=excluded.fcnt, dcnt=excluded.dcnt, seen=excluded.seen"
)


def pack_marks(nodes: Iterable[NodeRow]) -> bytes:
    """One marks-log row, deflated when that is smaller (gateway/outbox/_deflate.py)."""
    rows = b"".join([MARK.pack(node_id, fcnt, dcnt, len(seen), seen) for node_id, fcnt, dcnt, seen in nodes])
    return store_marks(rows, MARK.size) if rows else rows


def unpack_marks(blob: object) -> list[tuple[int, int, int, bytes]]:
    """The node rows of one marks-log row; a damaged tail is ignored, a row that does not
    inflate yields none."""
    if not isinstance(blob, bytes):
        return []
    try:
        blob = load_marks(blob, MARK.size)
    except zlib.error:
        return []
    whole = blob[: len(blob) - len(blob) % MARK.size]
    return [(node_id, fcnt, dcnt, seen[:n]) for node_id, fcnt, dcnt, n, seen in MARK.iter_unpack(whole)]


def load_nodes(db: sqlite3.Connection) -> list[NodeRow]:
    """Every node's committed state: the ``nodes`` table, then the marks log in order."""
    rows: dict[int, tuple[Any, ...]] = {
        r[0]: r for r in db.execute("SELECT node_id, fcnt, dcnt, seen FROM nodes")}
    for (blob,) in db.execute("SELECT rows FROM marks ORDER BY id"):
        rows.update((r[0], r) for r in unpack_marks(blob))
    return [NodeRow(*rows[n]) for n in sorted(rows)]


class MarksLog:
    """How many node rows the log holds and when to fold it; its SQL runs in the caller's
    transaction, and ``committed`` is told once that transaction has committed."""

    __slots__ = ("_db", "_fold_at", "rows")

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.rows = sum(len(unpack_marks(blob)) for (blob,) in db.execute("SELECT rows FROM marks"))
        self._fold_at = self._threshold()

    def _threshold(self) -> int:
        nodes = int(self._db.execute("SELECT count(*) FROM nodes").fetchone()[0])
        return max(FOLD_MIN_ROWS, FOLD_PER_NODE * nodes)

    def due(self, logged: int) -> bool:
        """Whether the commit that logs ``logged`` more rows folds the log."""
        return logged > 0 and self.rows + logged >= self._fold_at

    def append(self, marks: bytes, fold: bool) -> None:
        """Inside a transaction: one packed log row, then the fold if ``due`` said so."""
        self._db.execute("INSERT INTO marks (rows) VALUES (?)", (marks,))
        if fold:
            self.fold()

    def fold(self) -> None:
        """Inside a transaction: the latest row of each logged node into ``nodes``, log emptied."""
        latest: dict[int, tuple[int, int, int, bytes]] = {}
        for (blob,) in self._db.execute("SELECT rows FROM marks ORDER BY id"):
            latest.update((r[0], r) for r in unpack_marks(blob))
        self._db.executemany(_UPSERT_NODES, latest.values())
        self._db.execute("DELETE FROM marks")

    def committed(self, logged: int, folded: bool) -> None:
        if folded:
            self.rows = 0
            self._fold_at = self._threshold()
        else:
            self.rows += logged
