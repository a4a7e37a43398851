"""Two `chunkcache serve` replicas sharing a real redis-server and a real PostgreSQL (README "Scale out").

The replicas run the README's config file (its URLs swapped for the test servers'), each with its own
port and cache directory. The tests run in order over one cluster: ingest on A / answer on B, a restart
of B, a PostgreSQL restart, a Redis outage (the server comes back empty), and kill -9 of A in the middle
of an ingestion.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from chunkcache.bench.live_server import LiveServer
from servers import PostgresServer, RedisServer, serve_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
README_REDIS = "redis://127.0.0.1:6379/0"
README_PG = "postgresql+psycopg2://chunkcache@127.0.0.1:5432/postgres"
DOC = ("The Kuiper belt lies beyond the orbit of Neptune and holds many icy bodies. Pluto is the best known "
       "of them and was visited by the New Horizons probe in 2015. Arrokoth, a contact binary, was visited by "
       "the same probe in 2019. The Oort cloud lies much farther out and is the source of long period comets.")
GEN = {"query": "Which probe visited Pluto?", "max_tokens": 6}


def readme_config() -> str:
    """The TOML block of README's "Scale out" section."""
    section = (ROOT / "README.md").read_text().split("## Scale out", 1)[1]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        try:
            self.redis, self.pg = RedisServer().start(), PostgresServer().start()
        except RuntimeError as e:
            pytest.fail(f"real Redis and PostgreSQL servers needed: {e}", pytrace=False)
        text = readme_config()
        assert README_REDIS in text and README_PG in text
        self.config = tmp / "replicas.toml"
        self.config.write_text(text.replace(README_REDIS, self.redis.url).replace(README_PG, self.pg.url))
        self.a = self.replica("a")
        self.b = self.replica("b")
        for r in (self.a, self.b):
            r.start()
        for r in (self.a, self.b):
            r.wait_ready()
        self.state: dict = {}

    def replica(self, name: str, port: int | None = None) -> LiveServer:
        return serve_process(self.config, self.tmp / f"{name}.log", "--cache-dir", str(self.tmp / name), port=port)

    def close(self) -> None:
        for r in (self.a, self.b):
            r.stop()
        self.redis.cleanup()
        self.pg.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("replicas"))
    yield c
    c.close()


def ingest(replica: LiveServer, text: str, doc_id: str, chunk_tokens: int = 32) -> str:
    r = httpx.post(f"{replica.url}/documents", timeout=30, json={
        "documents": [{"id": doc_id, "text": text}], "chunk_tokens": chunk_tokens, "overlap_tokens": 0})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_job(replica: LiveServer, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = httpx.get(f"{replica.url}/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def ask(replica: LiveServer, keys: list[str], **extra: object) -> httpx.Response:
    return httpx.post(f"{replica.url}/generate_with_chunks", timeout=120,
                      json={"chunks": [{"id": k} for k in keys], **GEN, **extra})


def test_ingest_on_a_answer_on_b_from_the_remote_tier(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    job_id = ingest(a, DOC, "kuiper")
    job = wait_job(a, job_id)
    assert job["status"] == "done", job
    keys = job["result"]["chunk_keys"]
    assert len(keys) >= 2 and job["result"]["new_chunks"] == len(keys)
    assert httpx.get(f"{b.url}/jobs/{job_id}", timeout=10).json()["status"] == "done"  # shared job table

    rb = ask(b, keys)
    assert rb.status_code == 200, rb.text
    stats = rb.json()["stats"]
    # every chunk (and the system prefix, cached like a chunk) hits; the chunks come from Redis
    assert stats["chunk_misses"] == 0 and stats["chunk_hits"] == len(keys) + 1, stats
    assert stats["tiers_hit"].get("remote", 0) >= len(keys) and "disk" not in stats["tiers_hit"], stats
    ra = ask(a, keys)
    assert ra.status_code == 200 and "remote" not in ra.json()["stats"]["tiers_hit"], ra.text
    assert rb.json()["text"] == ra.json()["text"] and rb.json()["text"]

    # B started with an empty index: it rebuilds from the shared table and retrieves A's chunks
    rag = httpx.post(f"{b.url}/rag/answer", timeout=120, json={**GEN, "k": 2})
    assert rag.status_code == 200, rag.text
    found = [c["id"] for c in rag.json()["chunks"]]
    assert found and set(found) <= set(keys) and all(c["doc_id"] == "kuiper" for c in rag.json()["chunks"])
    cluster.state.update(keys=keys, job_id=job_id, text=ra.json()["text"])


def test_restarted_replica_still_answers_and_sees_the_job(cluster: Cluster) -> None:
    b = cluster.b
    b.stop()
    cluster.b = b = cluster.replica("b", port=b.port).start().wait_ready()
    job = httpx.get(f"{b.url}/jobs/{cluster.state['job_id']}", timeout=10)
    assert job.status_code == 200 and job.json()["status"] == "done", job.text
    r = ask(b, cluster.state["keys"])
    assert r.status_code == 200 and r.json()["text"] == cluster.state["text"], r.text
    assert r.json()["stats"]["chunk_misses"] == 0, r.text


def test_postgres_restart_answers_503_then_recovers(cluster: Cluster) -> None:
    b, keys = cluster.b, cluster.state["keys"]
    cluster.pg.stop()
    try:
        r = ask(b, keys)
        assert r.status_code == 503, r.text
        assert "catalog database unavailable" in r.json()["detail"], r.text
        assert httpx.get(f"{b.url}/healthz", timeout=10).status_code == 200  # the replica itself stays up
    finally:
        cluster.pg.resume()
    r = ask(b, keys)
    assert r.status_code == 200 and r.json()["text"] == cluster.state["text"], r.text


def test_redis_outage_falls_back_and_recovers(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    fresh = ["Titan is the largest moon of Saturn and has a thick nitrogen atmosphere."]
    cluster.redis.cleanup()  # stopped, its directory removed: a new server takes its port below
    try:
        r = httpx.post(f"{b.url}/generate_with_chunks", timeout=120, json={"chunks": fresh, **GEN})
        assert r.status_code == 200, r.text
        stats = r.json()["stats"]
        assert stats["chunk_misses"] == 1 and any("remote_unavailable" in f for f in stats["fallbacks"]), stats
        metrics = httpx.get(f"{b.url}/metrics", timeout=10).text
        assert re.search(r'chunkcache_store_faults_total\{op="get",reason="remote_unavailable"\} [1-9]', metrics), \
            [line for line in metrics.splitlines() if "faults" in line]
    finally:
        cluster.redis = RedisServer(port=cluster.redis.port).start()  # empty: no persistence
    time.sleep(5.5)  # the tier's retry_after_s: it tries the server again after that
    other = ["Europa is a moon of Jupiter with an ocean under its ice shell."]
    r = httpx.post(f"{a.url}/generate_with_chunks", timeout=120, json={"chunks": other, **GEN})
    assert r.status_code == 200 and r.json()["stats"]["chunk_misses"] == 1, r.text  # computed, put to Redis
    r = httpx.post(f"{b.url}/generate_with_chunks", timeout=120, json={"chunks": other, **GEN})
    assert r.status_code == 200 and r.json()["stats"]["tiers_hit"].get("remote") == 1, r.text


def test_kill_a_mid_ingestion_never_serves_a_partial_chunk(cluster: Cluster) -> None:
    import redis
    from sqlalchemy import create_engine, text

    from chunkcache.store.entry_format import decode_buffer

    a, b = cluster.a, cluster.b
    long_doc = " ".join(f"Station {i} of the survey recorded a mean surface temperature of {200 + i} kelvin "
                        f"and a dust density of {i * 3} particles per litre." for i in range(60))
    job_id = ingest(a, long_doc, "survey", chunk_tokens=24)
    deadline = time.monotonic() + 180
    while True:
        job = httpx.get(f"{a.url}/jobs/{job_id}", timeout=10).json()
        if job["stage"] == "precompute" and job["done"] >= 2:
            break
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.02)
    a.stop(kill=True)
    assert job["done"] < job["total"], job  # killed in the middle

    # every chunk entry in Redis is whole: header, checksums and key verify
    client = redis.Redis.from_url(cluster.redis.url)
    names = [n.decode() for n in client.keys("chunkcache:kv:*")]
    for name in names:
        kv = decode_buffer(torch.frombuffer(bytearray(client.get(name)), dtype=torch.uint8),
                           name.removeprefix("chunkcache:kv:"), None)
        assert kv.num_tokens > 0
    client.close()
    engine = create_engine(cluster.pg.url)
    with engine.connect() as db:
        rows = [r[0] for r in db.execute(text("SELECT key FROM chunkcache_chunk_texts WHERE doc_id = 'survey'"))]
    engine.dispose()
    assert 2 <= len(rows) < job["total"], (len(rows), job)
    # B answers over every chunk the table names: each one whole from Redis, never a partial entry
    r = ask(b, rows[:4], mode="blend")  # the plain entries: A was killed before its fused stage
    assert r.status_code == 200, r.text
    stats = r.json()["stats"]
    assert stats["tiers_hit"].get("remote") == min(4, len(rows)) and stats["chunk_misses"] == 0, stats
    assert not [f for f in stats["fallbacks"] if "checksum" in f or "corrupt" in f], stats
    # the dead replica's job: still listed on B, and reported failed once its heartbeat is stale
    deadline = time.monotonic() + 30
    while (job := httpx.get(f"{b.url}/jobs/{job_id}", timeout=10).json())["status"] != "failed":
        assert job["status"] == "running" and time.monotonic() < deadline, job
        time.sleep(1)
    assert "stopped updating this job" in job["error"], job
