"""Continuous batching behind the HTTP API, against a real `chunkcache serve`: concurrent requests get the same
text as the same requests one after another, and a plain JSON request whose client disconnects is cancelled
(the scheduler is idle again long before the abandoned answer would have finished)."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import AUTH, ApiServer, CHUNKS, body

pytestmark = pytest.mark.slow

LONG = {"chunks": ["1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"], "query": "Continue the list to 1000.",
        "mode": "full", "max_tokens": 200}
BODIES = [body(query=q, mode=m, max_tokens=8) for q, m in
          [("What is the capital of France?", "full"), ("Which river flows through Vienna?", "blend"),
           ("What is the largest city of Germany?", "prefix"), ("Name a city on the Danube.", "cacheblend")]]


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(Path(tmp_path_factory.mktemp("batching")), "--store", "memory", "--max-queue", "8",
                       "--max-batch", "4", "--max-batch-tokens", "64", "--max-new-tokens", "200").wait_ready()
    yield server
    server.stop()


def _post(url: str, data: dict) -> dict:
    with httpx.Client(base_url=url, headers=AUTH, timeout=300) as c:
        r = c.post("/generate_with_chunks", json=data)
        assert r.status_code == 200, r.text
        return r.json()


def test_concurrent_requests_answer_as_sequential_ones(batching_server: ApiServer) -> None:
    url = batching_server.url
    _post(url, {"chunks": list(CHUNKS), "query": "warm-up", "max_tokens": 1})  # chunk KV computed once
    sequential = [_post(url, b)["text"] for b in BODIES]
    with cf.ThreadPoolExecutor(len(BODIES)) as pool:
        concurrent = list(pool.map(lambda b: _post(url, b), BODIES))
    assert [r["text"] for r in concurrent] == sequential
    assert all(r["stats"]["generated_tokens"] >= 1 for r in concurrent)
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert health["queue_depth"] == 0


def test_disconnected_json_request_is_cancelled(batching_server: ApiServer) -> None:
    url = batching_server.url
    t0 = time.monotonic()
    whole = _post(url, LONG)["stats"]
    full_s = time.monotonic() - t0
    assert whole["generated_tokens"] >= 20, whole  # a long answer: the cancelled one would run for full_s
    generations = _generations(url)
    with httpx.Client(base_url=url, headers=AUTH, timeout=0.25 * full_s) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/generate_with_chunks", json=LONG)
    t1 = time.monotonic()
    while httpx.get(f"{url}/healthz", timeout=10).json()["queue_depth"]:
        assert time.monotonic() - t1 < 60
        time.sleep(0.05)
    assert time.monotonic() - t1 < full_s  # the abandoned answer did not run to its end
    assert _generations(url) == generations  # it never completed (a completed generation is observed)


def _generations(url: str) -> float:
    """Generations completed so far (the reuse-ratio histogram's count)."""
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("chunkcache_reuse_ratio_count")))
