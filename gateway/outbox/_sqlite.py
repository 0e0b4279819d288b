"""The outbox's file: its schema and pragmas, SQLite's error codes, and the one write transaction.

Every write of the outbox goes through ``write``: ``BEGIN IMMEDIATE`` .. ``COMMIT``, rolled back
on any error, and the bytes the process handed to write(2) meanwhile counted as disk wear.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from gateway.metrics import Metrics

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

# What says "this file cannot be read", as opposed to locked, unopenable or a full disk.
UNREADABLE: Final = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def error_code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary of an extended code


def connect(path: Path, synchronous: str, page_size: int | None) -> sqlite3.Connection:
    """The file opened in WAL mode with the outbox's tables (an old file's columns upgraded).

    A new file is created 0600 whatever the umask (outside the systemd unit's UMask=0077 too);
    SQLite gives its -wal and -shm files the database file's mode."""
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken bits off, never added: exact
        finally:
            os.close(fd)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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


def write(db: sqlite3.Connection, body: Callable[[], object], metrics: Metrics) -> None:
    """Run ``body`` in one write transaction; nothing of it stays if it raises."""
    before = _proc_wchar()
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            body()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLITE_FULL may have rolled it back already
                db.execute("ROLLBACK")
            raise
    finally:
        metrics.disk_bytes_written.inc(amount=max(0, _proc_wchar() - before))
