"""`chunkcache serve --config FILE` with a real Redis tier and a real PostgreSQL catalog named in the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servers import PostgresServer, RedisServer, free_port, redis_and_postgres

pytestmark = pytest.mark.slow
KEY = "cfg-test-key"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RedisServer, PostgresServer]]:
    with redis_and_postgres() as both:
        yield both


def test_serve_config_file_with_redis_tier_and_postgres_catalog(tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    import redis
    from sqlalchemy import create_engine, text

    redis_server, pg = servers
    port = free_port()
    cfg = tmp_path / "chunkcache.toml"
    cfg.write_text(f'threads = 1\ncache_dir = "{tmp_path / "cache"}"\n'
                   f'[store]\ncpu_bytes = "64MiB"\nredis_url = "{redis_server.url}"\ncatalog_url = "{pg.url}"\n'
                   f'eviction = "cost"\n[server]\nport = {port}\napi_key = "{KEY}"\nmax_new_tokens = 8\n')
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CHUNKCACHE_API_KEY", "CHUNKCACHE_DIR")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "chunkcache.cli", "serve", "--config", str(cfg)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            assert httpx.get(f"{url}/chunks/x", timeout=5).status_code == 401  # the file's api_key is in force
            r = c.post("/chunks", json={"chunks": ["Lake Baikal is the deepest lake on Earth.",
                                                   "Mount Everest is the highest mountain above sea level."]})
            assert r.status_code == 201, r.text
            keys = [ch["id"] for ch in r.json()["chunks"]]
            r = c.post("/generate_with_chunks", json={"chunks": [{"id": keys[0]}], "query": "Which lake?",
                                                      "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert r.json()["stats"]["chunk_hits"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    client = redis.Redis.from_url(redis_server.url)
    stored = {k.decode() for k in client.keys("chunkcache:kv:*")}
    client.close()
    assert all(f"chunkcache:kv:{k}" in stored for k in keys), (keys, stored)
    engine = create_engine(pg.url)
    with engine.connect() as db:
        rows = dict(db.execute(text("SELECT key, num_tokens FROM chunkcache_chunks")).all())
    engine.dispose()
    assert set(keys) <= set(rows) and all(rows[k] > 5 for k in keys)
    assert not (tmp_path / "cache" / "store" / "catalog.sqlite").exists()
