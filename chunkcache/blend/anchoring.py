"""KVCOMM placement: the blender's step that places anchored placeholders from the anchor estimate.

For each placeholder of the request (BlendRequest.placeholders), in order: its base KV (its text computed
behind the fixed precompute context, or the generated response's own KV; keys in their own frame) and the
base of the literal text after it are matched against the anchor pool (`AnchorIndex`, implemented by
agents/anchor_pool.py), then
  accepted: base + weighted anchor offsets is placed for both (layer by layer, through the LayerLoader);
  rejected, a document (user text) and the mode recomputes: left to the chunk path (placed by RoPE shift
      like any RAG chunk, then the mode's selection recomputes what deviates);
  rejected otherwise, or an anchor unreadable: the prompt is computed from this placeholder on (the fresh
      region grows to start there) and, after the prefill, each rejected placeholder from there on becomes an
      anchor: its computed KV minus its base (`measure`). Exact dense KV when nothing before it was estimated.
Every decision is in stats.slots. The base KV is fetched whole (matching reads every layer); the chunk path
keeps layer-wise loading.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.layer_loader import LayerLoader
from chunkcache.blend.request import BlendRequest, Placeholder
from chunkcache.blend.segment import SegmentKV, rotate
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner

log = logging.getLogger(__name__)


class AnchorUnavailable(Exception):
    """An anchor's tensors are corrupt or missing; the placeholder is computed instead."""


class AnchorMatch(Protocol):
    anchors: list
    entropy: float
    accept: bool
    reason: str


class AnchorIndex(Protocol):
    """What the blender needs of an anchor pool (all KV in its own frame, all layers)."""

    def match(self, placeholder: str, reader_key: str, base: SegmentKV, context_digest: str = "") -> AnchorMatch: ...

    def estimate(self, m: AnchorMatch, reader_key: str, base: SegmentKV,
                 follow: SegmentKV) -> tuple[SegmentKV, SegmentKV]: ...

    def add(self, placeholder: str, reader_key: str, base: SegmentKV, dense: SegmentKV, follow_base: SegmentKV,
            follow_dense: SegmentKV, context_digest: str = "") -> object: ...


@dataclass
class Placement:
    """fresh: first position computed in full (the first placeholder computed, else the suffix); placed: chunk
    indices already placed (estimates); rejected: (placeholder, base, follow base) to measure after the prefill."""

    fresh: int
    placed: set[int] = field(default_factory=set)
    rejected: list[tuple[Placeholder, SegmentKV, SegmentKV]] = field(default_factory=list)


def place_anchored(runner: ModelRunner, source: ChunkSource, pool: AnchorIndex, req: BlendRequest, cfg: BlendConfig,
                   loader: LayerLoader, stats) -> Placement:
    """Match every placeholder, place the accepted estimates through `loader`; stats gets slots and counts."""
    offsets = req.chunk_offsets
    out = Placement(req.suffix_start)
    cut = False
    clock = {"bases": 0.0, "match": 0.0, "estimate": 0.0}
    for p in req.placeholders:
        t0 = time.perf_counter()
        base, origin = source.base(req.chunks[p.chunk], p.chunk in req.responses)
        follow = source.base(req.chunks[p.follow])[0] if p.follow is not None else SegmentKV.empty(runner)
        clock["bases"] += time.perf_counter() - t0
        stats.chunk_hits += origin != "computed"
        stats.chunk_misses += origin == "computed"
        slot = {"placeholder": p.name, "base": origin}
        stats.slots.append(slot)
        t0 = time.perf_counter()
        try:
            m = pool.match(p.name, p.reader_key, base, p.context_digest)
        except AnchorUnavailable as err:
            msg = f"anchor_unavailable: placeholder {p.name!r}: anchor unusable ({err}); computed"
            log.warning(msg)
            stats.fallbacks.append(msg)
            slot.update(decision="dense", reason=str(err))
            m = None
        clock["match"] += time.perf_counter() - t0
        if m is not None:
            slot.update(decision="reuse" if m.accept else "dense", anchors=len(m.anchors),
                        entropy=round(m.entropy, 4), reason=m.reason)
        if cut:  # computed anyway; a rejected one is measured
            if slot["decision"] == "dense":
                out.rejected.append((p, base, follow))
            continue
        if m is not None and m.accept:
            t0 = time.perf_counter()
            est, est_follow = pool.estimate(m, p.reader_key, base, follow)
            clock["estimate"] += time.perf_counter() - t0
            loader.add_kv(est, offsets[p.chunk])
            out.placed.add(p.chunk)
            if p.follow is not None:
                loader.add_kv(est_follow, offsets[p.follow])
                out.placed.add(p.follow)
            stats.anchors_hit += 1
        elif m is not None and p.document and cfg.recomputes:
            slot["decision"] = "chunk"
        else:
            out.fresh, cut = offsets[p.chunk], True
            out.rejected.append((p, base, follow))
    stats.dense_fallback = cut
    stats.timings.update(clock)
    return out


def measure(runner: ModelRunner, pool: AnchorIndex, req: BlendRequest, cache: KVCache,
            rejected: list[tuple[Placeholder, SegmentKV, SegmentKV]]) -> int:
    """Each rejected placeholder (computed in this prefill) becomes an anchor: its computed KV rotated back to
    position 0, minus its base. Returns how many were added."""
    offsets = req.chunk_offsets
    for p, base, follow in rejected:
        o, L, F = offsets[p.chunk], base.num_tokens, follow.num_tokens
        fo = offsets[p.follow] if p.follow is not None else o + L
        freq, tri = runner.inv_freq, runner.use_triton
        dense = SegmentKV(base.token_ids, rotate(cache.keys[:, :, o:o + L], -o, freq, tri),
                          cache.values[:, :, o:o + L].clone())  # [n_layers, n_kv, L, d]
        follow_dense = SegmentKV(follow.token_ids, rotate(cache.keys[:, :, fo:fo + F], -fo, freq, tri),
                                 cache.values[:, :, fo:fo + F].clone())  # [n_layers, n_kv, F, d]
        pool.add(p.name, p.reader_key, base, dense, follow, follow_dense, p.context_digest)
    return len(rejected)
