"""FusionRAG (arXiv 2601.12904): chunk KV precomputed behind the chunk's nearest neighbours, not alone.

Offline, each chunk is prefilled behind [the precompute context (system prefix) | its top-n embedding
neighbours' tokens], so its KV has already attended to text it is likely to be retrieved with; online
(mode fusion) those entries are placed instead of the plain ones and the tokens the question attends most
over the placed cache are recomputed (the `query` rule, top recompute_ratio). Mode fusionqc places the same
entries and selects blend's chunk heads (half the budget) and, for the rest, by qcfuse's rule (the question over
each chunk's anchors at the critical layers; blend/modes.py).

fusionqc is the default mode (blend/config.py). A request that carries no fused contexts (no corpus to fuse
with: bare texts in Python, agents, chat turns) runs UNFUSED_MODE (blend) instead, and its stats say so. For an
indexed corpus the fused entries are precomputed at ingestion (retrieval/fused_entries.py).

Keys. The neighbours' tokens are part of the precompute context, and the context is part of a chunk's key
(store/keys.py chunk_key), exactly as the system prefix is: a fused entry and the plain entry of the same
chunk are two entries under two keys, each evicted on its own. Nothing in the store changes; the plain entry
stays what every other mode (and the exact first chunk) reads. A request names each chunk's fused context in
BlendRequest.fused (`fused_contexts` builds them; `fuse` with corpus neighbours where the chunk is indexed).

Cost at ingestion: per chunk, the neighbours' tokens are computed again behind the prefix (the prefix itself
comes from its own entry; ChunkSource.compute): about n x (mean chunk length) extra tokens, n + 1 times the
tokens of the plain precompute, and attention over the longer context. Storage: one more entry per chunk
(the chunk's own tokens; the neighbours' KV is not kept).

The paper (section 3.1, 3.2; read 2026-12-05) and where chunkcache differs, each measured on HotpotQA dev 0-29
(fusionqc at 0.15; BENCHMARKS.md, "FusionRAG's own parameters"):
- n: the paper recommends 10 (its ablation: 0/2/5/10/15 on Qwen2.5-7B). Here FUSION_NEIGHBOURS = 2: 5 and 10
  (in the paper's order, over a 1,992-paragraph knowledge base) were level with 2 within noise on agreement
  (KL 18% lower, also within noise), at 2.6x / 5.3x its ingestion tokens; 4 from the knowledge base in this
  order kept KL level with 2 (4 of the example's own paragraphs lowered it 40%: the benchmarks' shortcut).
- order: the paper places the most similar neighbour first, right after the system prompt; here it sits last,
  next to the chunk (not measured apart from n).
- neighbours: the top-n of the whole knowledge base by BGE-M3 embeddings; here cosine similarity of
  all-MiniLM-L6-v2 embeddings, over the index (server) or the request's own chunks (benchmarks; in a
  200-example knowledge base 57% of a paragraph's 2 nearest are its own example's, and fidelity was level).
- offline computation: the paper places the neighbours' cached plain KV and computes only the chunk over it
  (its Eq. 10); here the neighbours' tokens are prefilled too (exact context KV; `compute`).
- online rule: the paper scores tokens by the final layer's query-key product summed over the question's
  tokens, one global top-k; `fusion` uses chunkcache's `query` selector (the question's attention over the
  placed cache, summed over every layer), `fusionqc` chunk heads and qcfuse's. The paper's rule (final-layer
  attention mass, same cost) gave 32% higher KL than `fusion`'s, beyond noise, at level agreement
  (benchmarks/explore_fusion_online_rule.py): the `fusion` anchor is the stronger of the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.blend.request import BlendRequest

FUSION_NEIGHBOURS = 2


def neighbours(vectors, n: int = FUSION_NEIGHBOURS) -> list[list[int]]:
    """For each row of vectors [N, dim] (any scale), the indices of its n most cosine-similar other rows,
    most similar first."""
    v = torch.as_tensor(vectors, dtype=torch.float32)
    if v.dim() != 2 or n < 0:
        raise ValueError(f"vectors must be [N, dim] and n >= 0, got {tuple(v.shape)} and {n}")
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = v @ v.T  # [N, N]
    sims.fill_diagonal_(float("-inf"))
    k = min(n, v.shape[0] - 1)
    return sims.topk(k, dim=1).indices.tolist() if k > 0 else [[] for _ in range(v.shape[0])]


def contexts(prefix_ids: Sequence[int], near: Sequence[Sequence[Sequence[int]]]) -> tuple[tuple[int, ...], ...]:
    """Each chunk's fused context: prefix_ids, then its neighbours' tokens (near[i]: chunk i's neighbours,
    nearest first; placed nearest last, next to the chunk)."""
    return tuple(tuple(int(t) for t in [*prefix_ids, *(x for ids in reversed(ns) for x in ids)]) for ns in near)


def fused_contexts(prefix_ids: Sequence[int], chunks: Sequence[Sequence[int]], vectors,
                   n: int = FUSION_NEIGHBOURS) -> tuple[tuple[int, ...], ...]:
    """Each chunk's fused context: prefix_ids, then its n nearest chunks' tokens (nearest last)."""
    if len(chunks) != len(vectors):
        raise ValueError(f"vectors: {len(vectors)} embeddings for {len(chunks)} chunks")
    return contexts(prefix_ids, [[chunks[j] for j in near] for near in neighbours(vectors, n)])


def precompute_fused(source: ChunkSource, chunks: Sequence[Sequence[int]], contexts: Sequence[Sequence[int]],
                     reuse: bool = False) -> tuple[list[str], int, int]:
    """Precompute and store every chunk behind its fused context, replacing any entry (reuse: an entry the
    store holds is kept, as ingestion does). Returns (keys, extra tokens computed beyond the plain precompute:
    0 for an entry kept, entries computed)."""
    keys, extra, computed = [], 0, 0
    for ids, ctx in zip(chunks, contexts, strict=True):
        ids, ctx = tuple(int(t) for t in ids), tuple(int(t) for t in ctx)
        if reuse and source.holds(ids, ctx):
            keys.append(source.key(ids, ctx))
            continue
        keys.append(source.recompute(ids, ctx).key)
        extra += len(ctx) - len(source.context_ids)
        computed += 1
    return keys, extra, computed


def fuse(req: BlendRequest, context_ids: Sequence[int], vectors, n: int = FUSION_NEIGHBOURS,
         corpus: Sequence[Sequence[Sequence[int]] | None] | None = None) -> BlendRequest:
    """req carrying every chunk's fused context. Chunk i's neighbours: corpus[i] where given (its nearest
    chunks in the corpus, token ids, nearest first: the same for every request, so the fused entry is reused
    by any request holding the chunk), else its n nearest among the request's own chunks (vectors
    [n_chunks, dim]: their embeddings). Nothing is computed here: a fused entry missing from the store is
    precomputed by the blender when the request is placed (ChunkSource.open_layers), then reused."""
    own = fused_contexts(context_ids, req.chunks, vectors, n)
    if corpus is None:
        return replace(req, fused=own)
    if len(corpus) != len(req.chunks):
        raise ValueError(f"corpus: neighbours for {len(corpus)} chunks, the request has {len(req.chunks)}")
    near = contexts(context_ids, [ns if ns is not None else () for ns in corpus])
    return replace(req, fused=tuple(o if ns is None else c for o, c, ns in zip(own, near, corpus, strict=True)))


def with_fused(source: ChunkSource, req: BlendRequest, vectors, n: int = FUSION_NEIGHBOURS,
               reuse: bool = False) -> BlendRequest:
    """req carrying every chunk's fused context, neighbours drawn from the request's own chunks (a benchmark
    example's passages as its corpus; vectors [n_chunks, dim]: their embeddings), those entries precomputed
    (reuse: entries the store holds are kept, see precompute_fused)."""
    req = fuse(req, source.context_ids, vectors, n)
    precompute_fused(source, req.chunks, req.fused, reuse)
    return req
