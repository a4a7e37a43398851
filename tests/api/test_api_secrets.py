"""A live `chunkcache serve` with a password-protected Redis tier and a catalog URL with a password: Redis is
stopped while requests are in flight, and no response, log line or /metrics line carries either password."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import PostgresServer, RedisServer, serve_process, redis_and_postgres

pytestmark = pytest.mark.slow
REDIS_PW, PG_PW, KEY = "Redis-Pw-9c1e", "Pg-Pw-4b7d", "secrets-test-key"
TEXTS = ["Lake Baikal is the deepest lake on Earth.", "Mount Everest is the highest mountain above sea level.",
         "The Amazon is the largest rainforest.", "The Sahara is the largest hot desert."]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RedisServer, PostgresServer]]:
    with redis_and_postgres(REDIS_PW) as both:
        yield both


def test_no_password_in_responses_logs_or_metrics_with_redis_stopped_mid_request(tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    redis_server, pg = servers
    pg_url = pg.url.replace("chunkcache@", f"chunkcache:{PG_PW}@")  # trust auth: accepted, and must stay hidden
    cfg = tmp_path / "chunkcache.toml"  # a CPU tier too small for a chunk: every chunk lives in Redis only
    cfg.write_text(f'threads = 1\ncache_dir = "{tmp_path / "cache"}"\n[store]\ncpu_bytes = "16KiB"\ndisk = false\n'
                   f'redis_url = "{redis_server.url}"\ncatalog_url = "{pg_url}"\ntimeout_s = 0.5\n'
                   f'redis_retry_after_s = 0.2\n[server]\napi_key = "{KEY}"\nmax_new_tokens = 4\n')
    serve = serve_process(cfg, tmp_path / "server.log").start()
    bodies: list[str] = []
    try:
        serve.wait_ready()
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
            r = c.post("/chunks", json={"chunks": TEXTS[:2]})
            assert r.status_code == 201, r.text
            ids = [ch["id"] for ch in r.json()["chunks"]]
            gen = {"chunks": [{"id": ids[0]}, {"id": ids[1]}], "query": "Which lake?", "max_tokens": 4}
            r = c.post("/generate_with_chunks", json=gen)
            assert r.status_code == 200 and r.json()["stats"]["tiers_hit"].get("remote", 0) >= 2, r.text

            results: list[httpx.Response] = []

            def fire(body: dict) -> None:  # type: ignore[type-arg]
                with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as t:
                    results.append(t.post("/generate_with_chunks", json=body))

            batch = [gen, {**gen, "chunks": [*gen["chunks"], TEXTS[2]]}, {**gen, "stream": True}, gen, gen]
            threads = [threading.Thread(target=fire, args=(b,)) for b in batch]
            for t in threads:
                t.start()
            time.sleep(0.3)
            redis_server.stop()  # while the batch is queued and running
            for t in threads:
                t.join()
            answers = [c.post("/generate_with_chunks", json={**gen, "chunks": [*gen["chunks"], TEXTS[3]]}),
                       c.post("/rag/answer", json={"query": "Which lake is the deepest?", "k": 2, "max_tokens": 4}),
                       c.post("/chunks", json={"chunks": ["Mercury is the smallest planet."]}),
                       c.get(f"/chunks/{ids[0]}"), c.get("/metrics"), c.get("/healthz")]
            results += answers
            assert all(r.status_code in (200, 201) for r in results), [(r.status_code, r.text) for r in results]
            bodies = [r.text for r in results]
    finally:
        serve.stop()
    text = "\n".join(bodies)
    log = (tmp_path / "server.log").read_text()
    assert "remote_unavailable: " in text and "redis://:***@127.0.0.1" in text  # the fault was met and reported
    assert 'chunkcache_store_faults_total{op="get",reason="remote_unavailable"}' in text  # /metrics
    assert "remote_unavailable" in log
    for secret in (REDIS_PW, PG_PW):
        assert secret not in text, [b for b in bodies if secret in b]
        assert secret not in log, [line for line in log.splitlines() if secret in line]
