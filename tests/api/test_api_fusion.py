"""Mode fusion over HTTP: the server draws each chunk's neighbours from the request's own chunks (its index's
embedder), so the answer equals the Python API's `fuse` on the same chunks, and a repeat reuses the fused entries."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import CHUNKS, QUERY, body


@pytest.mark.slow
def test_fusion_request_equals_the_python_api_and_reuses_its_entries(client, smollm) -> None:
    import torch

    from chunkcache.blend.chunk_source import DictStore
    from chunkcache.blend.config import BlendConfig
    from chunkcache.blend.engine import ChunkCacheEngine
    from chunkcache.blend.fusion import fuse
    from chunkcache.retrieval.embedder import Embedder
    from chunkcache.runner.decode import SamplingConfig
    from chunkcache.runner.runner import ModelRunner

    chunks = [*CHUNKS, f"Rome is the capital of Italy (ref {uuid.uuid4().hex[:8]})."]  # new to the server
    payload = body(chunks=chunks, mode="fusion", return_token_ids=True)
    first = client.post("/generate_with_chunks", json=payload)
    assert first.status_code == 200, first.text
    again = client.post("/generate_with_chunks", json=payload).json()
    assert first.json()["stats"]["mode"] == again["stats"]["mode"] == "fusion"
    assert first.json()["stats"]["chunk_misses"] >= len(chunks) - 1  # the fused entries computed once...
    assert again["stats"]["chunk_misses"] == 0 and again["token_ids"] == first.json()["token_ids"]  # ...then reused

    torch.set_num_threads(1)
    engine = ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), DictStore())
    req = engine.prompts.request(chunks, QUERY)
    fused = fuse(req, engine.source.context_ids, Embedder().encode(chunks))
    assert fused.fused != req.fused and len(fused.fused) == len(chunks)
    ans = engine.generate(fused, BlendConfig(mode="fusion"), SamplingConfig(max_new_tokens=payload["max_tokens"]))
    assert ans.token_ids == first.json()["token_ids"]
