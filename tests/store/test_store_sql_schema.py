"""Replicas that share one PostgreSQL catalog start together: every process creating chunkcache's tables
at the same moment must succeed. SQLAlchemy's `create_all` checks, then creates, so two processes could
both see no table and the second CREATE failed (DuplicateTable, or a unique violation on pg_type).
Real PostgreSQL server, real processes, several rounds on an empty database."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import create_engine, inspect, text

_TABLES = {
    "jobs": {"chunkcache_jobs"},
    "chunk_texts": {"chunkcache_chunk_texts", "chunkcache_index_version"},
    "catalog": {"chunkcache_chunks", "chunkcache_anchors"},
}


def _open(which: str, url: str, barrier, errors) -> None:  # type: ignore[no-untyped-def]
    from chunkcache.api.job_table import JobTable
    from chunkcache.retrieval.chunk_table import ChunkTable
    from chunkcache.store.catalog import Catalog

    open_table = {"jobs": JobTable, "chunk_texts": lambda u: ChunkTable(url=u), "catalog": Catalog}[which]
    barrier.wait()
    try:
        open_table(url).close()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.put(f"{type(e).__name__}: {e}"[:400])


@pytest.mark.parametrize("which", list(_TABLES))
def test_processes_creating_the_tables_together_all_succeed(pg_url: str, which: str) -> None:
    ctx = mp.get_context("fork")
    engine = create_engine(pg_url)
    for _ in range(4):
        with engine.begin() as c:
            for table in _TABLES[which]:
                c.execute(text(f"DROP TABLE IF EXISTS {table}"))
        barrier, errors = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(which, pg_url, barrier, errors)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        failed = []
        while not errors.empty():
            failed.append(errors.get())
        assert failed == [] and all(p.exitcode == 0 for p in procs), failed
        assert _TABLES[which] <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_sqlite_files_get_wal_and_each_callers_synchronous_level(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chunkcache.agents.anchor_catalog import AnchorCatalog
    from chunkcache.store.catalog import Catalog

    levels = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    catalog, anchors = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}"), AnchorCatalog(tmp_path / "anchors.db")
    for opened, synchronous in ((catalog, "NORMAL"), (anchors, "FULL")):
        with opened.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert levels[c.exec_driver_sql("PRAGMA synchronous").scalar()] == synchronous
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 15000
        opened.close()


def test_an_unknown_synchronous_level_is_refused_by_name() -> None:
    from chunkcache.store.sql_schema import use_sqlite_pragmas

    with pytest.raises(ValueError, match="synchronous"):
        use_sqlite_pragmas(create_engine("sqlite://"), synchronous="normal; DROP TABLE x")
