"""FusionRAG's offline step for an indexed corpus (blend/fusion.py): each chunk's fused entry, precomputed
behind its nearest chunks in the index, at ingestion.

A request holding an indexed chunk takes the same corpus neighbours (`corpus_neighbours`, ChunkIndex.neighbours),
so the fused modes (fusionqc, the default, and fusion) find the entry and compute nothing for it. The
neighbours are the index's at the time of the call. A later ingestion that brings a nearer chunk changes a
chunk's fused context: the ingestion computes the new entries of the indexed chunks among each new chunk's
REFRESH_FAN nearest whose neighbours it changed. The search is one-sided (a chunk whose neighbour lists changed
but which is not among the new chunk's REFRESH_FAN nearest is missed, and its new entry is computed on first
use: a chunk miss in that request's stats). Deleting a chunk does not refresh the entries of chunks that had it
as a neighbour (first use again).
The old entries age out of the store like any unused one.

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

REFRESH_FAN = 8  # guessed: a new chunk is looked for in the neighbour lists of its 8 nearest indexed chunks


def corpus_neighbours(engine: ChunkCacheEngine, index: ChunkIndex, texts: Sequence[str], vectors: np.ndarray,
                      n: int = FUSION_NEIGHBOURS) -> list[list[tuple[int, ...]] | None]:
    """Per text (vectors [len(texts), dim]: their embeddings): the token ids of its n nearest other chunks in the
    index, nearest first, or None for a text the index does not hold (blend/fusion.fuse's `corpus`)."""
    return [None if near is None else [engine.prompts.chunk_ids(t) for t in near]
            for near in index.neighbours(list(texts), vectors, n)]


def precompute_fused_entries(engine: ChunkCacheEngine, index: ChunkIndex, texts: Sequence[str], vectors: np.ndarray,
                             n: int = FUSION_NEIGHBOURS, fan: int = REFRESH_FAN) -> int:
    """Compute (or find) the fused entry of every indexed text behind its corpus neighbours (vectors
    [len(texts), dim]: their embeddings), then of every chunk already indexed whose n nearest now include one
    of texts (looked for among each text's `fan` nearest: the entries the new texts made stale). Returns the
    tokens computed beyond the plain precompute (0 for entries already stored). A text the index does not hold
    is skipped: its neighbours depend on each request."""
    extra = _ensure(engine, texts, corpus_neighbours(engine, index, texts, vectors, n))
    if fan < 1:
        return extra
    new = set(texts)
    near, near_vectors = index.nearby(vectors, fan)
    keep = [i for i, t in enumerate(near) if t not in new]
    others = [near[i] for i in keep]
    theirs = index.neighbours(others, near_vectors[keep], n)  # their neighbours now, new texts included
    stale = [i for i, ns in enumerate(theirs) if ns is not None and new.intersection(ns)]
    return extra + _ensure(engine, [others[i] for i in stale],
                           [[engine.prompts.chunk_ids(t) for t in theirs[i]] for i in stale])


def _ensure(engine: ChunkCacheEngine, texts: Sequence[str], near: Sequence[list[tuple[int, ...]] | None]) -> int:
    """Each text's entry behind its neighbours' tokens near[i] (None: skipped), computed unless stored, and its
    qcfuse anchors (read by fusionqc, the default) unless the engine holds them; returns the neighbours' tokens
    computed (0 for entries already stored)."""
    extra = 0
    for text, ns in zip(texts, near, strict=True):
        if ns is None:  # not indexed: its neighbours come from each request's own chunks
            continue
        ids, ctx = engine.prompts.chunk_ids(text), contexts(engine.source.context_ids, [ns])[0]
        kv = None  # a held entry is read only if its anchors are missing
        if not engine.source.holds(ids, ctx):
            kv, hit = engine.source.get(ids, ctx)
            extra += 0 if hit else len(ctx) - len(engine.source.context_ids)
        engine.warm_anchors(ids, ctx, kv=kv)
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
