"""End to end against a real `chunkcache serve` subprocess over loopback HTTP (httpx)."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
from api_helpers import AUTH, CHUNKS, MAX_QUEUE, QUERY, body, sse_events


def test_api_healthz_open_and_auth_required(live_server) -> None:
    h = httpx.get(f"{live_server.url}/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and len(h.json()["fingerprint"]) == 32
    health = h.json()
    assert health["attention"].startswith("attention: ")  # the dispatch measured at start-up, for people
    assert set(health["attention_choices"]) == {"sparse-short", "sparse-long", "sparse-xlong", "dense-short",
                                                "dense-long"}
    assert set(health["attention_choices"].values()) <= {"torch", "cpp"}
    assert health["linear"] == "linear layers: float32"  # linear_dtype not asked: the model's own
    assert health["attention_precision"] == "attention products in the model's dtype"  # attention_dtype not asked
    assert httpx.post(f"{live_server.url}/generate_with_chunks", json=body()).status_code == 401
    r = httpx.post(f"{live_server.url}/generate_with_chunks", json=body(), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "authorization" in r.json()["detail"]
    assert httpx.get(f"{live_server.url}/metrics").status_code == 401


def test_api_generate_reuses_chunk_kv(client) -> None:
    chunks = [f"{c} (run {time.time_ns()})" for c in CHUNKS]  # fresh texts: the first request must miss
    first = client.post("/generate_with_chunks", json=body(chunks=chunks, mode="cacheblend"))
    assert first.status_code == 200, first.text
    s1 = first.json()["stats"]
    assert s1["mode"] == "cacheblend" and s1["chunk_misses"] >= len(chunks)
    assert s1["attention"] in ("torch", "cpp")  # the implementation that ran the recompute pass
    assert s1["chunk_hits"] + s1["chunk_misses"] == len(chunks) + 1  # the system prefix is a chunk too
    second = client.post("/generate_with_chunks", json=body(chunks=chunks, mode="cacheblend")).json()
    s2 = second["stats"]
    assert s2["chunk_hits"] == len(chunks) + 1 and s2["chunk_misses"] == 0  # system prefix + every chunk
    assert s2["tiers_hit"].get("cpu", 0) >= len(chunks) + 1
    assert 0 < s2["reused_tokens"] < s2["prompt_tokens"]
    assert s2["recomputed_tokens"] == round(0.15 * s2["context_tokens"])
    assert 0 < s2["ttft_s"] <= s2["engine_s"] and s2["queue_s"] >= 0 and 1 <= s2["generated_tokens"] <= 6
    assert second["text"] == first.json()["text"] and second["text"]
    full = client.post("/generate_with_chunks", json=body(chunks=chunks, mode="full")).json()["stats"]
    assert full["reused_tokens"] == 0 and full["recomputed_tokens"] == full["context_tokens"]


def test_api_decode_correction_leaves_the_prefill_and_queues_the_cached_context(client) -> None:
    ask = body(mode="blend", max_tokens=8, return_token_ids=True)
    plain = client.post("/generate_with_chunks", json=ask).json()
    fixed = client.post("/generate_with_chunks", json={**ask, "decode_correction": 1000}).json()
    s, p = fixed["stats"], plain["stats"]
    assert p["decode_pending"] == 0 and s["recomputed_tokens"] == p["recomputed_tokens"] > 0
    assert 0 < s["decode_pending"] < s["prompt_tokens"]  # all after the system prefix and chunk 0
    full = client.post("/generate_with_chunks", json={**ask, "mode": "full", "decode_correction": 1000}).json()
    assert full["stats"]["decode_pending"] == 0  # nothing placed from cache: nothing to correct
    assert fixed["token_ids"][0] == plain["token_ids"][0]  # the first token comes from the same prefill
    at_once = client.post("/generate_with_chunks", json={**ask, "decode_correction_steps": 1}).json()
    assert at_once["stats"]["decode_pending"] == s["decode_pending"] < 1000  # K = 1000 also recomputes it at once
    assert at_once["token_ids"] == fixed["token_ids"]


def test_api_stream_matches_plain_answer(client) -> None:
    plain = client.post("/generate_with_chunks", json=body(mode="naive")).json()
    with client.stream("POST", "/generate_with_chunks", json=body(mode="naive", stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"} and len(kinds) >= 2
    done = events[-1][1]
    assert "".join(d["text"] for _, d in events[:-1]) == done["text"] == plain["text"]
    assert done["stats"]["generated_tokens"] == len(events) - 1
    assert done["stats"]["prompt_tokens"] == plain["stats"]["prompt_tokens"]


def test_api_stream_errors_before_first_token_are_http_errors(client) -> None:
    r = client.post("/generate_with_chunks", json=body(chunks=[{"id": "ab" * 32}], stream=True))
    assert r.status_code == 404 and r.json()["field"] == "chunks[0].id"


def test_api_chunk_lifecycle(client) -> None:
    text = f"Lake Baikal is the deepest lake on Earth. ({time.time_ns()})"
    put = client.post("/chunks", json={"chunks": [text], "doc_id": "lakes"})
    assert put.status_code == 201, put.text
    (stored,) = put.json()["chunks"]
    info = client.get(f"/chunks/{stored['id']}").json()
    assert info["text"] == text and info["doc_id"] == "lakes" and info["indexed"] and "cpu" in info["tiers"]
    assert info["num_tokens"] == stored["num_tokens"] > 5
    by_id = client.post("/generate_with_chunks", json=body(chunks=[{"id": stored["id"]}, CHUNKS[0]])).json()
    by_text = client.post("/generate_with_chunks", json=body(chunks=[{"text": text}, CHUNKS[0]])).json()
    assert by_id["text"] == by_text["text"]
    assert by_id["stats"]["chunk_misses"] == 0  # precomputed by POST /chunks
    assert client.delete(f"/chunks/{stored['id']}").status_code == 204
    gone = client.get(f"/chunks/{stored['id']}")
    assert gone.status_code == 404 and "chunk_id" in gone.json()["detail"]
    assert client.delete(f"/chunks/{stored['id']}").status_code == 404
    r = client.post("/generate_with_chunks", json=body(chunks=[{"id": stored["id"]}]))
    assert r.status_code == 404 and r.json()["field"] == "chunks[0].id"


def test_api_other_system_prompt_recomputes_behind_its_prefix(client) -> None:
    system = f"You answer in one word. ({time.time_ns()})"
    first = client.post("/generate_with_chunks", json=body(system=system, mode="prefix")).json()
    assert first["stats"]["chunk_misses"] == 1 + 1  # new system prefix; first chunk behind the new prefix
    full = client.post("/generate_with_chunks", json=body(system=system, mode="full")).json()
    assert first["text"] == full["text"]
    again = client.post("/generate_with_chunks", json=body(system=system, mode="cacheblend")).json()["stats"]
    assert again["chunk_misses"] == len(CHUNKS) - 1  # the other chunks had not been computed behind it yet
    default = client.post("/generate_with_chunks", json=body(mode="full")).json()
    assert default["stats"]["prompt_tokens"] != full["stats"]["prompt_tokens"]


def test_api_documents_job_then_rag_answer(client) -> None:
    tag = time.time_ns()
    docs = [{"id": f"volcano-{tag}", "text": "Mount Etna is an active volcano on the east coast of Sicily. "
             "It is one of the tallest active volcanoes in Europe.\n\nIts eruptions are frequent."},
            {"id": f"bridge-{tag}", "text": "The Golden Gate Bridge spans the strait between San Francisco Bay "
             "and the Pacific Ocean. It opened in 1937."}]
    r = client.post("/documents", json={"documents": docs, "chunk_tokens": 64, "overlap_tokens": 8})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "done", job
    # the last stage precomputes every chunk's fused entry behind its index neighbours
    assert job["stage"] == "fusion" and job["done"] == job["total"] == job["result"]["chunks"] >= 2
    assert job["result"]["fusion_extra_tokens"] > 0
    keys = job["result"]["chunk_keys"]
    assert {client.get(f"/chunks/{k}").json()["doc_id"] for k in keys} == {d["id"] for d in docs}
    rag = client.post("/rag/answer", json={"query": "Which volcano is on Sicily?", "k": 2, "max_tokens": 4})
    assert rag.status_code == 200, rag.text
    got = rag.json()
    assert got["chunks"][0]["doc_id"] == f"volcano-{tag}" and "Etna" in got["chunks"][0]["text"]
    assert got["chunks"][0]["score"] >= got["chunks"][1]["score"]
    # this job's chunks (plain and fused entries) were precomputed by it; another test's chunk the search also
    # returns may have been ingested without its fused entry, which is then computed on first use
    others = sum(c["id"] not in keys for c in got["chunks"])
    assert got["stats"]["chunk_misses"] <= others
    assert client.get("/jobs/0123456789abcdef").status_code == 404


def test_api_metrics_report_requests_ttft_and_store(client) -> None:
    for _ in range(2):  # the second request finds the chunks the first one computed (order-independent)
        assert client.post("/generate_with_chunks", json=body(max_tokens=1, mode="cacheblend")).status_code == 200
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['chunkcache_ttft_seconds_count{mode="cacheblend"}'] >= 1
    assert values['chunkcache_store_bytes{tier="cpu"}'] > 0 and values['chunkcache_store_bytes{tier="disk"}'] > 0
    assert values['chunkcache_prompt_tokens_total{kind="reused"}'] > 0
    assert values['chunkcache_request_tier_hits_total{tier="cpu"}'] > 0
    assert any(k.startswith("chunkcache_http_requests_total") and 'route="/generate_with_chunks"' in k
               and 'status="200"' in k for k in values)
    assert "chunkcache_queue_depth 0.0" in text


def test_api_full_queue_answers_429_and_loses_nothing(live_server) -> None:
    n = MAX_QUEUE + 6

    def one(i: int) -> int:
        with httpx.Client(base_url=live_server.url, headers=AUTH, timeout=120) as c:
            return c.post("/generate_with_chunks", json=body(query=f"{QUERY} ({i})", max_tokens=8)).status_code

    with cf.ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(one, range(n)))
    assert len(codes) == n and set(codes) <= {200, 429}
    assert codes.count(429) >= 1 and codes.count(200) >= 1
    metrics = httpx.get(f"{live_server.url}/metrics", headers=AUTH).text
    assert 'chunkcache_refused_requests_total{reason="queue_full"}' in metrics
