"""What the collector needs from a database, and the two it ships with.

``open_store(url)``: ``postgresql://...`` (or a libpq ``host=... dbname=...`` string) for the
city, ``sqlite:///path`` (the embedded default) for one site. A store's ``commit(rows)`` writes
one batch in ONE transaction and returns how many readings were new; when it returns, the rows
are durable (PostgreSQL: its commit, ``synchronous_commit`` as the server is configured;
SQLite: WAL with ``synchronous=FULL``), and only then does the collector acknowledge the
messages. Writing the same rows twice stores nothing twice: every table is keyed (readings by
(node_id, fcnt), receptions by (node_id, fcnt, gateway_id)), so a redelivery after a crash
between commit and acknowledgement is harmless.

``StoreUnavailable`` (connection lost, server restarting, deadlock victim): the transaction did
not happen; retry the same batch later. ``StoreRejected``: this batch can never be written as
it is (a value the schema refuses); the collector splits it to find the message at fault.
"""

from __future__ import annotations

from typing import Protocol

from collector.rows import Rows


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The database cannot be reached or aborted the transaction; nothing was written."""


class StoreRejected(StoreError):
    """The database refused the data itself; nothing was written."""


class Store(Protocol):
    dialect: str

    def commit(self, rows: Rows) -> int: ...

    def close(self) -> None: ...


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        from collector.store_sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")) or "dbname=" in url or "host=" in url:
        from collector.store_pg import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"store: not a postgresql:// or sqlite:/// URL: {url!r}")
