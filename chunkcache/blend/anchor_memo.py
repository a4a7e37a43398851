"""qcfuse's anchors per placed entry, remembered per engine: computed at ingestion (`warm`), else on first use.

A chunk's anchors (blend/qcfuse.py `chunk_anchors`) depend on the KV placed for it, which the chunk's tokens and
its entry (what that KV was computed behind: the precompute context, a fused context, or ("response",))
determine, and on the sink tokens ahead of it. QCFuse computes them offline; here the ingestion of a fused
entry computes them beside it (retrieval/fused_entries.py, at the default anchor_ratio / anchor_sinks and the
model's critical layers: what fusionqc, the default mode, reads), so the first request that places the entry
does not. Plain entries (mode qcfuse) and a request with other anchor parameters compute them on the first
request that places the entry.

With the store's catalog (`catalog`: the engine's ChunkStore catalog, SQLite by default, PostgreSQL shared by
replicas) every anchor set computed is also written there (int32 bytes, store/keys.py `anchor_key`), and a
miss in the memo reads it from there before computing: a restarted process over the disk tier, or another
replica, reads what was computed once. A stored set is used only if it has the count the parameters imply and
increasing in-range indices on every layer; a catalog that fails or holds a malformed set is logged and the
anchors are computed (they only steer which tokens are recomputed, never which KV is served).

Anchors at a layer do not depend on later layers, so one row set serves any `last` it covers; a request asking
for deeper layers computes them and replaces the row set.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import torch
from cachetools import LRUCache

from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.blend.qcfuse import anchor_count, chunk_anchors
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.errors import brief_error
from chunkcache.store.keys import anchor_key, chunk_key

log = logging.getLogger(__name__)

MEMO_ENTRIES = 8192  # about 1.6 KB an entry (a 130-token chunk: 20 anchors x 10 layers, int64): 13 MB when full


class AnchorTable(Protocol):
    """Where anchor sets persist (store/catalog.py Catalog): int32 [layers, count] as bytes under a key."""

    def get_anchors(self, key: str) -> tuple[int, int, bytes] | None: ...

    def put_anchors(self, key: str, chunk_key: str | None, layers: int, count: int, data: bytes) -> None: ...


class AnchorMemo:
    """An LRU of anchors [k, a] (layers 0..k-1, chunk-relative indices) keyed by (model, sink tokens, entry,
    chunk tokens, anchor ratio, sinks), over an optional persistent `catalog`. One per engine; safe to use from
    an ingestion thread beside the request path (the LRU is locked, computing is not). computed / loaded: anchor
    sets computed here / read from the catalog."""

    def __init__(self, capacity: int = MEMO_ENTRIES, catalog: AnchorTable | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self._rows: LRUCache = LRUCache(maxsize=capacity)
        self._lock = threading.Lock()
        self.catalog = catalog
        self.computed = self.loaded = 0

    def __len__(self) -> int:
        return len(self._rows)

    def _row(self, runner: ModelRunner, key: tuple, last: int) -> torch.Tensor | None:
        """The held rows of key, else (or when they stop before `last`) the catalog's, kept when deeper."""
        with self._lock:
            got = self._rows.get(key)
        if (got is None or got.shape[0] <= last) and self._persists(key):
            stored = self._load(runner, key)
            if stored is not None and (got is None or stored.shape[0] > got.shape[0]):
                with self._lock:
                    self._rows[key] = got = stored
                    self.loaded += 1
        return got

    def _persists(self, key: tuple) -> bool:
        """With a catalog, for entries computed behind a token context (not responses, not unknown entries)."""
        entry = key[2]
        return self.catalog is not None and bool(entry) and all(isinstance(t, int) for t in entry)

    def _load(self, runner: ModelRunner, key: tuple) -> torch.Tensor | None:
        _, _, _, chunk, ratio, sinks = key
        try:
            row = self.catalog.get_anchors(self._keys(key)[0])  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - SQLAlchemy or driver errors: compute instead
            log.warning("anchors not read from the catalog (%s); computing them", brief_error(e))
            return None
        if row is None:
            return None
        layers, count, data = row
        n = len(chunk)
        ok = layers >= 1 and count == anchor_count(n, ratio, sinks) and len(data) == 4 * layers * count
        rows = torch.frombuffer(bytearray(data), dtype=torch.int32).view(layers, count) if ok else None  # [k, a]
        if rows is None or (count and (rows.min() < 0 or rows.max() >= n or (rows[:, 1:] <= rows[:, :-1]).any())):
            log.warning("anchors in the catalog for a %d-token chunk are malformed (%d x %d); computing them",
                        n, layers, count)
            return None
        return rows.to(device=runner.device, dtype=torch.int64)

    @staticmethod
    def _keys(key: tuple) -> tuple[str, str]:
        """(the catalog's key of these anchors, the store key of the entry they were computed from)."""
        fingerprint, sink_ids, entry, chunk, ratio, sinks = key
        entry_key = chunk_key(fingerprint, entry, chunk)
        return anchor_key(entry_key, sink_ids, ratio, sinks), entry_key

    def _save(self, key: tuple, rows: torch.Tensor) -> None:
        data = rows.to(device="cpu", dtype=torch.int32).contiguous().numpy().tobytes()
        try:
            self.catalog.put_anchors(*self._keys(key), rows.shape[0], rows.shape[1], data)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - the memo still holds them
            log.warning("anchors not written to the catalog (%s)", brief_error(e))

    def holds(self, runner: ModelRunner, sink_ids: tuple[int, ...], entry: tuple, chunk: tuple[int, ...],
              last: int, ratio: float, sinks: int) -> bool:
        got = self._row(runner, (runner.fingerprint, sink_ids, entry, chunk, ratio, sinks), last)
        return got is not None and got.shape[0] > last

    def get(self, runner: ModelRunner, cache: KVCache, sink_ids: tuple[int, ...], entry: tuple,
            chunk: tuple[int, ...], offset: int, last: int, ratio: float, sinks: int) -> torch.Tensor:
        """Anchors [last + 1, a] of the chunk at cache positions offset..offset+len(chunk) (sinks: the prompt's
        first tokens, sink_ids, at 0..len(sink_ids)), from the memo or computed and kept."""
        key = (runner.fingerprint, sink_ids, entry, chunk, ratio, sinks)
        got = self._row(runner, key, last)
        if got is None or got.shape[0] <= last:
            got = chunk_anchors(runner, cache, offset, len(chunk), len(sink_ids), last, ratio, sinks)
            with self._lock:
                self._rows[key] = got
                self.computed += 1
            if self._persists(key):
                self._save(key, got)
        return got[:last + 1].to(runner.device)

    @torch.inference_mode()
    def warm(self, runner: ModelRunner, source: ChunkSource, chunk: tuple[int, ...], context_ids: tuple[int, ...],
             last: int, ratio: float, sinks: int, kv: ChunkKV | None = None) -> bool:
        """Compute the anchors of the stored entry of `chunk` behind `context_ids` (kv: that entry when the
        caller already holds it; else read, computed and stored when missing), as a request whose prompt starts
        with that context's first `sinks` tokens would: the sinks' KV from the entry of the context's prefix, the
        chunk right after them (anchors use relative positions only). False when the memo (or its catalog) already
        held them."""
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
