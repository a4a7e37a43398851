"""A streaming client that disconnects stops its generation: the model worker is free for the next request
at once, instead of decoding the rest of the abandoned answer. Against a real `chunkcache serve` allowed
long answers; the next request's `queue_s` (its wait for the model worker) shows whether the abandoned
decode went on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import AUTH, ApiServer

pytestmark = pytest.mark.slow

LONG = {"chunks": ["1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"], "query": "Continue the list to 1000.",
        "mode": "full", "max_tokens": 400}


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(Path(tmp_path_factory.mktemp("cancel")), "--max-new-tokens", "400",
                       "--store", "memory").wait_ready()
    yield server
    server.stop()


def _next_request(client: httpx.Client) -> dict:
    r = client.post("/generate_with_chunks", json={**LONG, "max_tokens": 1})
    assert r.status_code == 200, r.text
    return r.json()["stats"]


def test_disconnect_mid_stream_frees_the_model_worker(long_server: ApiServer) -> None:
    with httpx.Client(base_url=long_server.url, headers=AUTH, timeout=300) as client:
        t0 = time.monotonic()
        whole = client.post("/generate_with_chunks", json=LONG).json()["stats"]  # what the abandoned answer costs
        full_s = time.monotonic() - t0
        assert whole["generated_tokens"] >= 20, whole  # a long answer (measured: 50 tokens, 20 s on a busy 2-core box)
        with client.stream("POST", "/generate_with_chunks", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("event: token"):
                pass
        t1 = time.monotonic()
        stats = _next_request(client)
        assert stats["queue_s"] < 0.25 * full_s, (stats["queue_s"], full_s)  # the abandoned decode stopped
        assert time.monotonic() - t1 < 0.5 * full_s
