"""qcfuse's anchors per placed entry, remembered per engine: computed at ingestion (`warm`), else on first use.

A chunk's anchors (blend/qcfuse.py `chunk_anchors`) depend on the KV placed for it, which the chunk's tokens and
its entry (what that KV was computed behind: the precompute context, a fused context, or ("response",))
determine, and on the sink tokens ahead of it. QCFuse computes them offline; here the ingestion of a fused
entry computes them beside it (retrieval/fused_entries.py, at the default anchor_ratio / anchor_sinks and the
model's critical layers: what fusionqc, the default mode, reads), so the first request that places the entry
does not. Anchors are not written to the chunk store: a process that did not ingest an entry (a restart over
the disk tier, another replica), plain entries (mode qcfuse) and a request with other anchor parameters compute
them on the first request that places the entry, and keep them.

Anchors at a layer do not depend on later layers, so one row set serves any `last` it covers; a request asking
for deeper layers computes them and replaces the row set.
"""

from __future__ import annotations

import threading

import torch
from cachetools import LRUCache

from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.blend.qcfuse import chunk_anchors
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_kv import ChunkKV

MEMO_ENTRIES = 8192  # about 1.6 KB an entry (a 130-token chunk: 20 anchors x 10 layers, int64): 13 MB when full


class AnchorMemo:
    """An LRU of anchors [k, a] (layers 0..k-1, chunk-relative indices) keyed by (model, sink tokens, entry,
    chunk tokens, anchor ratio, sinks). One per engine, not shared between processes; safe to use from an
    ingestion thread beside the request path (the LRU is locked, computing is not)."""

    def __init__(self, capacity: int = MEMO_ENTRIES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self._rows: LRUCache = LRUCache(maxsize=capacity)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def _row(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            return self._rows.get(key)

    def holds(self, runner: ModelRunner, sink_ids: tuple[int, ...], entry: tuple, chunk: tuple[int, ...],
              last: int, ratio: float, sinks: int) -> bool:
        got = self._row((runner.fingerprint, sink_ids, entry, chunk, ratio, sinks))
        return got is not None and got.shape[0] > last

    def get(self, runner: ModelRunner, cache: KVCache, sink_ids: tuple[int, ...], entry: tuple,
            chunk: tuple[int, ...], offset: int, last: int, ratio: float, sinks: int) -> torch.Tensor:
        """Anchors [last + 1, a] of the chunk at cache positions offset..offset+len(chunk) (sinks: the prompt's
        first tokens, sink_ids, at 0..len(sink_ids)), from the memo or computed and kept."""
        key = (runner.fingerprint, sink_ids, entry, chunk, ratio, sinks)
        got = self._row(key)
        if got is None or got.shape[0] <= last:
            got = chunk_anchors(runner, cache, offset, len(chunk), len(sink_ids), last, ratio, sinks)
            with self._lock:
                self._rows[key] = got
        return got[:last + 1].to(runner.device)

    @torch.inference_mode()
    def warm(self, runner: ModelRunner, source: ChunkSource, chunk: tuple[int, ...], context_ids: tuple[int, ...],
             last: int, ratio: float, sinks: int, kv: ChunkKV | None = None) -> bool:
        """Compute the anchors of the stored entry of `chunk` behind `context_ids` (kv: that entry when the
        caller already holds it; else read, computed and stored when missing), as a request whose prompt starts
        with that context's first `sinks` tokens would: the sinks' KV from the entry of the context's prefix, the
        chunk right after them (anchors use relative positions only). False when the memo already held them."""
        s = min(sinks, len(context_ids))
        sink_ids, prefix = tuple(context_ids[:s]), source.context_ids
        if self.holds(runner, sink_ids, tuple(context_ids), chunk, last, ratio, sinks):
            return False
        if s and (len(prefix) < s or tuple(prefix[:s]) != sink_ids):
            raise ValueError(f"context_ids: must start with the engine's precompute context's first {s} tokens")
        if kv is None:
            kv, _ = source.get(chunk, tuple(context_ids))
        n = len(chunk)
        cache = runner.new_cache(s + n)
        if s:
            head, _ = source.get(prefix, ())  # the prefix entry: exact KV at positions 0..len(prefix)
            cache.write(slice(None), slice(0, s), head.keys[:, :, :s], head.values[:, :, :s])
        cache.write(slice(None), slice(s, s + n), kv.keys, kv.values, rope_delta=s - kv.base_position)
        self.get(runner, cache, sink_ids, tuple(context_ids), chunk, s, last, ratio, sinks)
        return True
