"""FusionRAG's offline step for an indexed corpus (blend/fusion.py): each chunk's fused entry, precomputed
behind its nearest chunks in the index, at ingestion.

A request holding an indexed chunk takes the same corpus neighbours (`corpus_neighbours`, ChunkIndex.neighbours),
so mode fusion (the default) finds the entry and computes nothing for it. The neighbours are the index's at the
time of the call: a later ingestion that brings a nearer chunk changes a chunk's fused context, and its new entry
is computed on first use (a chunk miss in that request's stats); the old entry ages out of the store like any
unused one.

Cost: per chunk, its FUSION_NEIGHBOURS neighbours' tokens computed again behind the system prefix, then the
chunk behind them: about 3x the plain precompute's tokens (measured: 2.0x the plain tokens extra on MuSiQue and
HotpotQA, BENCHMARKS.md), and one more store entry of the chunk's own size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.fusion import FUSION_NEIGHBOURS, contexts, fuse
from chunkcache.blend.request import BlendRequest
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.embedder import Embedder


def corpus_neighbours(engine: ChunkCacheEngine, index: ChunkIndex, texts: Sequence[str], vectors: np.ndarray,
                      n: int = FUSION_NEIGHBOURS) -> list[list[tuple[int, ...]] | None]:
    """Per text (vectors [len(texts), dim]: their embeddings): the token ids of its n nearest other chunks in the
    index, nearest first, or None for a text the index does not hold (blend/fusion.fuse's `corpus`)."""
    return [None if near is None else [engine.prompts.chunk_ids(t) for t in near]
            for near in index.neighbours(list(texts), vectors, n)]


def precompute_fused_entries(engine: ChunkCacheEngine, index: ChunkIndex, texts: Sequence[str], vectors: np.ndarray,
                             n: int = FUSION_NEIGHBOURS) -> int:
    """Compute (or find) the fused entry of every indexed text behind its corpus neighbours (vectors
    [len(texts), dim]: their embeddings). Returns the tokens computed beyond the plain precompute (0 for entries
    already stored). A text the index does not hold is skipped: its neighbours depend on each request."""
    near = corpus_neighbours(engine, index, texts, vectors, n)
    extra = 0
    for text, ns in zip(texts, near, strict=True):
        if ns is None:  # not indexed: its neighbours come from each request's own chunks
            continue
        ctx = contexts(engine.source.context_ids, [ns])[0]
        _, hit = engine.source.get(engine.prompts.chunk_ids(text), ctx)
        extra += 0 if hit else len(ctx) - len(engine.source.context_ids)
    return extra


def fuse_request(engine: ChunkCacheEngine, req: BlendRequest, texts: Sequence[str], embedder: Embedder,
                 index: ChunkIndex | None = None, local: bool = False) -> BlendRequest:
    """req (built from the chunk texts `texts`) carrying its chunks' fused contexts for mode fusion. Chunk i's:
    its corpus neighbours where `index` holds it (precomputed at ingestion); else, with `local`, its nearest
    among the request's own chunks (by embedder's vectors; a new chunk set then computes its entries on first
    use); else none (its plain entry). A request in which no chunk after the first gets a fused context is
    returned unchanged: it runs blend (blend/config.UNFUSED_MODE). Nothing is computed here."""
    vectors = embedder.encode(list(texts))  # [n_chunks, 384]
    corpus = corpus_neighbours(engine, index, texts, vectors) if index is not None else [None] * len(texts)
    if not local:
        if all(ns is None for ns in corpus[1:]):  # the first chunk is placed exact, from its plain entry
            return req
        corpus = [ns if ns is not None else [] for ns in corpus]
    return fuse(req, engine.source.context_ids, vectors, corpus=corpus)
