"""Ingestion precomputes each chunk's fused entry behind its corpus neighbours (FusionRAG's offline step) and its
qcfuse anchors, so a request over indexed chunks in the default mode (fusionqc) finds every entry it places and
computes neither entries nor anchors."""

from __future__ import annotations

import torch

from chunkcache.blend import anchor_memo
from chunkcache.blend.chunk_source import DictStore
from chunkcache.blend.config import DEFAULT_MODE, BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.fusion import FUSION_NEIGHBOURS
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.chunking import ChunkingConfig
from chunkcache.retrieval.fused_entries import fuse_request
from chunkcache.retrieval.ingest import Document, Ingestor, IngestResult
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

TOPICS = ("rivers of South America", "volcanoes in Africa", "Gothic cathedrals in France", "honey bee colonies")
CHUNKING = ChunkingConfig(chunk_tokens=32, overlap_tokens=4)


def _docs() -> list[Document]:
    return [Document(" ".join(f"Fact {i} about {t}: item {i} is number {i * (d + 3)} in the survey." for i in range(6)),
                     f"doc{d}") for d, t in enumerate(TOPICS)]


def _ingested(smollm) -> tuple[ChunkCacheEngine, ChunkIndex, IngestResult, list[str]]:
    """The topics ingested into an empty in-memory store and index: (engine, index, result, distinct texts)."""
    torch.set_num_threads(1)
    engine = ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), DictStore())
    index = ChunkIndex(None)
    res = Ingestor(engine, index, CHUNKING).ingest(_docs())
    return engine, index, res, [index.get(k).text for k in dict.fromkeys(res.chunk_keys)]


def _fused_stored(engine: ChunkCacheEngine, text: str, neighbours: list[str]) -> bool:
    """The store holds text's entry under the key of [prefix | its neighbours, nearest last | text]."""
    ids = engine.prompts.chunk_ids
    ctx = tuple(engine.source.context_ids) + tuple(t for x in reversed(neighbours) for t in ids(x))
    return engine.source.key(tuple(ids(text)), ctx) in engine.source.store._items


def _no_anchors(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise AssertionError("anchors computed on the request path")


def test_ingest_precomputes_the_fused_entries_that_requests_place(smollm, monkeypatch) -> None:
    engine, index, res, texts = _ingested(smollm)
    assert len(texts) >= 6 and res.stage_seconds["fusion"] > 0

    # each chunk's entry sits under the key of [prefix | its neighbours, nearest last | chunk]
    ids = engine.prompts.chunk_ids
    near = index.neighbours(texts, index.embedder.encode(texts), FUSION_NEIGHBOURS)
    assert all(ns is not None and len(ns) == FUSION_NEIGHBOURS for ns in near)
    assert all(_fused_stored(engine, text, ns) for text, ns in zip(texts, near, strict=True))
    assert res.fusion_extra_tokens == sum(len(ids(x)) for ns in near for x in ns)

    # a request over indexed chunks, in the default mode: every fused entry found, none computed, and every
    # chunk's anchors computed at ingestion (the refresh's entries too: at least one row per chunk)
    assert len(engine.anchor_memo) >= len(texts)
    monkeypatch.setattr(anchor_memo, "chunk_anchors", _no_anchors)
    pick = [texts[-1], texts[0], texts[len(texts) // 2]]
    req = fuse_request(engine, engine.prompts.request(pick, "Which survey item is largest?"), pick,
                       index.embedder, index)
    out = engine.prefill(req, BlendConfig())
    assert out.stats.mode == DEFAULT_MODE and not out.stats.fallbacks
    assert out.stats.chunk_misses == 0 and out.stats.chunk_hits >= len(pick)
    monkeypatch.undo()

    again = Ingestor(engine, index, CHUNKING).ingest(_docs())  # same corpus: every entry already stored
    assert again.fusion_extra_tokens == 0
    plain = Ingestor(engine, ChunkIndex(None), CHUNKING, fused=False).ingest(_docs())
    assert plain.fusion_extra_tokens == 0 and plain.stage_seconds["fusion"] == 0
    index.close()


def test_anchors_computed_at_ingestion_serve_a_restarted_engine(smollm, tmp_path, monkeypatch) -> None:
    """Over a disk tier and its SQLite catalog (the embedded defaults), a restarted engine reads the anchors the
    ingestion computed: its first default-mode request computes none and selects what the first engine did."""
    torch.set_num_threads(1)
    cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 30), TierConfig("disk", write_through=True)),
                      cache_dir=str(tmp_path))
    runner, index = ModelRunner(smollm.model, smollm.tokenizer), ChunkIndex(None)
    with ChunkStore(cfg) as store:
        engine = ChunkCacheEngine(runner, store)
        texts = [index.get(k).text for k in dict.fromkeys(Ingestor(engine, index, CHUNKING).ingest(_docs()).chunk_keys)]
        pick = [texts[-1], texts[0], texts[len(texts) // 2]]
        req = fuse_request(engine, engine.prompts.request(pick, "Which survey item is largest?"), pick,
                           index.embedder, index)
        before = engine.prefill(req, BlendConfig())
        assert engine.anchor_memo.computed >= len(texts) and engine.anchor_memo.loaded == 0
    monkeypatch.setattr(anchor_memo, "chunk_anchors", _no_anchors)
    with ChunkStore(cfg) as store:
        restarted = ChunkCacheEngine(runner, store)
        after = restarted.prefill(req, BlendConfig())
        assert after.stats.mode == DEFAULT_MODE and after.stats.chunk_misses == 0
        assert restarted.anchor_memo.computed == 0 and restarted.anchor_memo.loaded == len(pick) - 1
    assert after.stats.recomputed_tokens == before.stats.recomputed_tokens > 0
    assert (after.logits - before.logits).abs().max().item() < 1e-4
    index.close()


def test_a_later_ingestion_refreshes_the_entries_whose_neighbours_it_changed(smollm) -> None:
    engine, index, _, old = _ingested(smollm)
    before = dict(zip(old, index.neighbours(old, index.embedder.encode(old), FUSION_NEIGHBOURS), strict=True))

    # a near copy of the first document: it becomes a nearest neighbour of that document's chunks
    late = Ingestor(engine, index, CHUNKING).ingest([Document(_docs()[0].text.replace("survey", "census"), "late")])
    new = {index.get(k).text for k in late.chunk_keys}
    after = dict(zip(old, index.neighbours(old, index.embedder.encode(old), FUSION_NEIGHBOURS), strict=True))
    changed = [t for t in old if after[t] != before[t]]
    assert changed and all(new.intersection(after[t]) for t in changed)

    # the entry under each changed chunk's current neighbours was computed by the late ingestion
    assert all(_fused_stored(engine, text, after[text]) for text in changed)
    ids = engine.prompts.chunk_ids
    own = sum(len(ids(x)) for ns in index.neighbours(sorted(new), index.embedder.encode(sorted(new)),
                                                      FUSION_NEIGHBOURS) for x in ns)
    assert late.fusion_extra_tokens == own + sum(len(ids(x)) for t in changed for x in after[t])

    pick = [changed[0], old[-1] if old[-1] != changed[0] else old[0]]
    req = fuse_request(engine, engine.prompts.request(pick, "Which survey item is largest?"), pick,
                       index.embedder, index)
    out = engine.prefill(req, BlendConfig())
    assert out.stats.mode == DEFAULT_MODE and out.stats.chunk_misses == 0
    index.close()
