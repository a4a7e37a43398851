"""The catalog URL in the form every PostgreSQL document uses, `postgresql://user@host:port/db`, works as
well as `postgresql+psycopg2://`, against a real PostgreSQL server: the start-up check, the chunk catalog,
the jobs table and the `chunkcache` CLI. A driver that cannot be imported is a config error naming
`store.catalog_url`, printed before any model loads (exit status 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_kvgen import FP

from chunkcache.api.job_table import JobTable
from chunkcache.config import ConfigError, EngineConfig, StoreSettings, check_config
from chunkcache.store.catalog import Catalog, ChunkMeta

FORMS = {"postgresql": "psycopg", "postgresql+psycopg": "psycopg", "postgresql+psycopg2": "psycopg2"}


def _form(pg_url: str, scheme: str) -> str:
    return scheme + "://" + pg_url.split("://", 1)[1]


def _cli(*argv: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """`chunkcache ARGV` in a fresh interpreter; prelude runs first (to take a driver away)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CHUNKCACHE_")}
    env["HF_HUB_OFFLINE"] = "1"
    code = f"{prelude}\nimport sys\nfrom chunkcache.cli import main\nsys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("scheme", list(FORMS))
def test_catalog_and_jobs_on_each_url_form(pg_url: str, scheme: str) -> None:
    url = _form(pg_url, scheme)
    check_config(EngineConfig(store=StoreSettings(disk=False, catalog_url=url)))
    cat = Catalog(url)
    try:
        assert cat.engine.dialect.driver == FORMS[scheme]
        cat.upsert(ChunkMeta("k" * 64, FP, 16, "float32", (4, 2, 16, 8), 8192, 3.0, on_disk=True))
        assert cat.get("k" * 64).tiers == ("disk",) and cat.keys(FP) == ["k" * 64]
    finally:
        cat.close()
    jobs = JobTable(url)
    try:
        assert jobs.engine.dialect.driver == FORMS[scheme]
        jobs.insert("j1", "ingest", "owner-a")
        assert jobs.get("j1").status == "queued"
    finally:
        jobs.close()


@pytest.mark.slow
def test_cli_with_the_plain_postgresql_url(pg_url: str, tmp_path: Path) -> None:
    url = _form(pg_url, "postgresql")
    r = _cli("stats", "--json", "--cache-dir", str(tmp_path), "--catalog-url", url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["catalog"] == []


def test_missing_driver_is_a_config_error(pg_url: str) -> None:
    url = _form(pg_url, "postgresql+pg8000")  # a dialect SQLAlchemy knows, whose driver is not installed
    with pytest.raises(ConfigError, match=r"^store\.catalog_url: the driver of postgresql\+pg8000:// is not "
                                          r"installed \(No module named 'pg8000'\)"):
        check_config(EngineConfig(store=StoreSettings(disk=False, catalog_url=url)))


@pytest.mark.slow
@pytest.mark.parametrize("scheme,prelude", [
    ("postgresql+pg8000", ""),
    ("postgresql", "import sys; sys.modules['psycopg'] = None  # psycopg 3 not installed"),
])
def test_cli_refuses_a_missing_driver_before_the_model(pg_url: str, tmp_path: Path, scheme: str,
                                                       prelude: str) -> None:
    r = _cli("demo", "--cache-dir", str(tmp_path), "--catalog-url", _form(pg_url, scheme), prelude=prelude)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"chunkcache: config error: store.catalog_url: the driver of {scheme}:// is not "
                               f"installed"), r.stderr
    assert "Traceback" not in r.stderr and "model loaded" not in r.stdout
