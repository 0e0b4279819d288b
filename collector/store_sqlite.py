"""The embedded store (one site): SQLite in WAL mode, ``synchronous=FULL`` so a returned commit
survives a power cut, ``INSERT ... ON CONFLICT`` on the same keys as PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from collector import schema
from collector.rows import (
    READING_COLUMNS,
    RECEPTION_COLUMNS,
    STATE_COLUMNS,
    STATE_VALUE_COLUMNS,
    Rows,
)
from collector.store import StoreRejected, StoreUnavailable

_NEWER: Final = "excluded.last_fcnt > node_state.last_fcnt"
_STATE: Final = (
    f"INSERT INTO node_state ({', '.join(STATE_COLUMNS)}) VALUES ({', '.join('?' * len(STATE_COLUMNS))}) "
    "ON CONFLICT (node_id) DO UPDATE SET "
    + ", ".join(f"{c} = CASE WHEN {_NEWER} THEN COALESCE(excluded.{c}, node_state.{c}) "
                f"ELSE COALESCE(node_state.{c}, excluded.{c}) END" for c in STATE_VALUE_COLUMNS)
    + f", site = CASE WHEN {_NEWER} THEN excluded.site ELSE node_state.site END"
    f", last_seen_s = CASE WHEN {_NEWER} THEN excluded.last_seen_s ELSE node_state.last_seen_s END"
    ", last_fcnt = MAX(node_state.last_fcnt, excluded.last_fcnt)"
)
_READING: Final = (f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(READING_COLUMNS))}) ON CONFLICT DO NOTHING")
_RECEPTION: Final = (f"INSERT INTO receptions ({', '.join(RECEPTION_COLUMNS)}) "
                     f"VALUES ({', '.join('?' * len(RECEPTION_COLUMNS))}) ON CONFLICT DO NOTHING")
_STATUS: Final = (
    "INSERT INTO gateway_status (site, gateway_id, online, body, updated_s) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (site, gateway_id) DO UPDATE SET online = excluded.online, body = excluded.body, "
    "updated_s = excluded.updated_s"
)
_EVENT: Final = ("INSERT INTO gateway_events (site, gateway_id, digest, received_s, body) "
                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One commit at a time, from whichever worker thread the event loop hands it to.
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for stmt in schema.statements("sqlite"):
                self._conn.execute(stmt)

    def commit(self, rows: Rows) -> int:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany(_READING, rows.readings)
            stored = conn.total_changes - before
            conn.executemany(_RECEPTION, rows.receptions)
            conn.executemany(_STATE, rows.states)
            conn.executemany(_STATUS, rows.statuses)
            conn.executemany(_EVENT, rows.events)
            conn.execute("COMMIT")
            return stored
        except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError) as exc:
            conn.execute("ROLLBACK")
            raise StoreRejected(str(exc)) from None
        except sqlite3.Error as exc:  # locked past the timeout, disk full, I/O error
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreUnavailable(str(exc)) from None

    def close(self) -> None:
        self._conn.close()
