"""`chunkcache serve --calibrate`: the model is calibrated before the port opens, the ratio stored under the
server's cache dir, and a request asking for "calibrated": true runs at exactly that ratio."""

from __future__ import annotations

import json

import httpx
import pytest
from api_helpers import AUTH, ApiServer, CHUNKS, QUERY

from chunkcache.blend.config import DEFAULT_MODE

SAMPLE = [{"chunks": list(CHUNKS), "question": QUERY},
          {"chunks": ["The Nile is a major north-flowing river in northeastern Africa.",
                      "Mount Kilimanjaro is a dormant volcano in Tanzania, the highest mountain in Africa."],
           "question": "Which is the highest mountain in Africa?"}]


@pytest.mark.slow
def test_serve_calibrate_stores_the_ratio_and_requests_use_it(tmp_path) -> None:
    data = tmp_path / "sample.json"
    data.write_text(json.dumps(SAMPLE))
    cache = tmp_path / "cache"
    cache.mkdir()
    # a target every ratio meets: the smallest one tried (0.05) is stored
    server = ApiServer(cache, "--calibrate", "--calibrate-data", str(data), "--calibrate-limit", "2",
                       "--target-agreement", "0").wait_ready(timeout_s=300)
    try:
        [profile] = (cache / "profiles").glob("*.json")
        cal = json.loads(profile.read_text())["calibrated"]
        assert set(cal) == {DEFAULT_MODE, "blend"}  # the default and the mode its requests without an index run
        assert all(c["recompute_ratio"] == 0.05 and c["met"] and c["n"] == 2 for c in cal.values())
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
            chunks = ["Lisbon is the capital of Portugal.", "Madrid is the capital of Spain.",
                      "Porto lies on the Douro river, north of Lisbon, and is the second city of Portugal."]
            ask = {"chunks": chunks, "query": "What is the capital of Portugal?", "max_tokens": 6,
                   "return_token_ids": True}
            calibrated = c.post("/generate_with_chunks", json={**ask, "calibrated": True}).json()
            explicit = c.post("/generate_with_chunks", json={**ask, "recompute_ratio": 0.05}).json()
            other = c.post("/generate_with_chunks", json={**ask, "recompute_ratio": 0.5}).json()
    finally:
        server.stop()
    assert calibrated["token_ids"] == explicit["token_ids"]
    assert calibrated["stats"]["recomputed_tokens"] == explicit["stats"]["recomputed_tokens"] \
        < other["stats"]["recomputed_tokens"]
