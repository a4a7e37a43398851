"""Mode fusion over HTTP. A chunk the server has not ingested takes its neighbours from the request's own chunks
(the index's embedder), so the answer equals the Python API's `fuse` on the same chunks, and a repeat reuses
the fused entries; an ingested chunk takes its neighbours from the corpus (the index), so its fused entry,
precomputed at ingestion unless the request says `"fused": false`, is reused by other chunk sets too."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import CHUNKS, QUERY, body

from chunkcache.blend.config import DEFAULT_MODE


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


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_fusion_over_ingested_chunks_takes_corpus_neighbours_reused_by_other_chunk_sets(client, fused) -> None:
    tag = uuid.uuid4().hex[:8]
    rome, paris, tower, louvre = (f"{t} (ref {tag})" for t in (
        "Rome is the capital of Italy.", "Paris is the capital of France.",
        "The Eiffel Tower stands in Paris, France.", "The Louvre in Paris, France, holds the Mona Lisa."))
    put = client.post("/chunks", json={"chunks": [rome, paris, tower, louvre], "fused": fused})
    assert put.status_code == 201, put.text
    first = client.post("/generate_with_chunks", json=body(chunks=[rome, paris, tower, louvre]))  # default mode
    assert first.status_code == 200, first.text
    assert first.json()["stats"]["mode"] == DEFAULT_MODE
    # ingested with fused entries: none computed; without: those of paris, tower, louvre, on first use
    assert first.json()["stats"]["chunk_misses"] == (0 if fused else 3)
    # Another chunk set: a chunk's neighbours come from the corpus, not from the request, so paris and tower
    # find the fused entries computed above (among the request's own chunks, paris's would be rome and tower).
    other = client.post("/generate_with_chunks", json=body(chunks=[rome, tower, paris], mode="fusion"))
    assert other.status_code == 200, other.text
    assert other.json()["stats"]["chunk_misses"] == 0


@pytest.mark.slow
def test_default_mode_over_chunks_no_corpus_holds_runs_blend(client) -> None:
    """The default fuses what the corpus knows; ad-hoc chunks have no corpus neighbours, so the request runs
    blend over their plain entries (no fused entries computed for a chunk set that may never recur)."""
    tag = uuid.uuid4().hex[:8]
    chunks = [f"{t} (ref {tag})" for t in ("Oslo is the capital of Norway.", "Bergen is a city in Norway.",
                                          "The fjords of Norway were carved by glaciers.")]
    default = client.post("/generate_with_chunks", json=body(chunks=chunks, return_token_ids=True)).json()
    blend = client.post("/generate_with_chunks", json=body(chunks=chunks, mode="blend", return_token_ids=True)).json()
    assert default["stats"]["mode"] == "blend" and default["stats"]["fallbacks"][0].startswith(f"{DEFAULT_MODE}:")
    assert default["token_ids"] == blend["token_ids"] and not blend["stats"]["fallbacks"]
    assert blend["stats"]["chunk_misses"] == 0  # the default's request left the plain entries, nothing more
