"""Creating chunkcache's SQL tables when several processes may do it at once. Torch-free.

Replicas that share one PostgreSQL catalog start together. SQLAlchemy's `create_all` checks for each
table, then creates the missing ones, so two processes can both find no table and the second CREATE
fails (DuplicateTable, or a unique violation on pg_type). On PostgreSQL the check and the creation run
in one transaction holding an advisory lock, so they are serial across processes. SQLite serialises
writers itself; a lost race there surfaces as "table already exists" and is retried, and the second
check then finds the table. `use_sqlite_pragmas` gives a SQLite engine the WAL journal and busy timeout
every chunkcache file uses, so readers never block the writer.
"""

from __future__ import annotations

import zlib

from sqlalchemy import Engine, MetaData, event, func, select
from sqlalchemy.exc import SQLAlchemyError

SCHEMA_LOCK_KEY = zlib.crc32(b"chunkcache.create_tables")  # one advisory lock key for every chunkcache table


def create_tables(metadata: MetaData, engine: Engine, attempts: int = 3) -> None:
    """Create metadata's missing tables (and their indexes) in engine's database; safe to race."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # the lock is released when this transaction ends
            conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)
        return
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise


def use_sqlite_pragmas(engine: Engine, synchronous: str = "FULL", busy_timeout_ms: int = 15000) -> None:
    """Every new connection of a SQLite engine: WAL journal, the given synchronous level, a busy timeout."""
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")

    def on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()

    event.listen(engine, "connect", on_connect)
