"""Place chunk KV into a request's cache one layer at a time, just before the layer loop needs it.

A chunk on a slow tier (disk, Redis) is opened as a layer stream whose reader thread runs ahead of
the compute, so loading layer l+1.. overlaps computing layer l. A chunk that misses, or whose entry
turns out unusable part-way (bad checksum, wrong shape), is recomputed and its remaining layers come
from the fresh KV: the cache never holds wrong or partial KV.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from chunkcache.blend.chunk_source import ChunkSource, Layer, kv_layers
from chunkcache.blend.segment import SegmentKV
from chunkcache.runner.kv_cache import KVCache

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    token_ids: tuple[int, ...]
    offset: int
    base_position: int
    layers: Iterator[Layer]  # (layer, k [n_kv, L, d], v [n_kv, L, d])
    context: tuple[int, ...] | None = None  # the precompute context of its entry (None: the source's default)


class LayerLoader:
    """Per request: chunks added with their offsets; `load(l)` writes layer l of every one into the cache.

    Layers must be loaded in increasing order. Invariant: after `load(l)`, positions
    [offset, offset + L) of layer l hold the chunk's KV rotated to its offset, for every added chunk.
    """

    def __init__(self, source: ChunkSource, cache: KVCache) -> None:
        self.source = source
        self.cache = cache
        self.pending: list[_Pending] = []
        self.in_hand: list[tuple[SegmentKV, int]] = []  # KV already in memory: written whole at the first load
        self.load_s = 0.0  # time spent writing placed KV into the cache
        self.next_layer = 0
        self.hits = self.misses = 0
        self._delta_memo: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}

    def add(self, token_ids: tuple[int, ...], offset: int, response: bool = False,
            context: tuple[int, ...] | None = None) -> str:
        """Place a chunk (response: a stored generated response first; context: the entry precomputed behind
        these tokens, e.g. a FusionRAG entry); returns its origin (ChunkSource)."""
        layers, base, origin = self.source.open_layers(token_ids, response, context)
        hit = origin != "computed"
        self.hits += hit
        self.misses += not hit
        self.pending.append(_Pending(token_ids, offset, base, layers, context))
        return origin

    def add_kv(self, seg: SegmentKV, offset: int) -> None:
        """Place KV already in hand (a KVCOMM estimate, keys in their own frame) at `offset`. Nothing to overlap:
        it is written for every layer in one call (one RoPE rotation) at the first `load`."""
        self.in_hand.append((seg, offset))

    def load(self, layer: int) -> None:
        """Write layer `layer` of every added chunk (and any skipped earlier layers) into the cache."""
        t0 = time.perf_counter()
        for seg, offset in self.in_hand:  # [n_layers, n_kv, L, d] each, all layers at once
            self.cache.write(slice(None), slice(offset, offset + seg.num_tokens), seg.keys, seg.values,
                             rope_delta=offset)
        self.in_hand.clear()
        while self.next_layer <= layer:
            self._write_layer(self.next_layer)
            self.next_layer += 1
        self.load_s += time.perf_counter() - t0

    def load_all(self) -> None:
        self.load(self.cache.num_layers - 1)

    def _write_layer(self, layer: int) -> None:
        """Layer `layer` of every pending chunk. Chunks laid side by side are written by one cache write: their
        K/V concatenated, each token rotated by its own chunk's delta (one call per run instead of per chunk)."""
        runs: list[list[tuple[_Pending, torch.Tensor, torch.Tensor]]] = []
        for p in self.pending:
            k, v = self._layer(p, layer)  # [n_kv, n, d] each
            prev = runs[-1][-1] if runs else None
            if prev is not None and prev[0].offset + len(prev[0].token_ids) == p.offset \
                    and (prev[1].device, prev[1].dtype) == (k.device, k.dtype):
                runs[-1].append((p, k, v))
            else:
                runs.append([(p, k, v)])
        for run in runs:
            first, last = run[0][0], run[-1][0]
            where = slice(first.offset, last.offset + len(last.token_ids))
            if len(run) == 1:
                self.cache.write(layer, where, run[0][1], run[0][2], rope_delta=first.offset - first.base_position)
                continue
            shifts = tuple((p.offset - p.base_position, len(p.token_ids)) for p, _, _ in run)
            self.cache.write(layer, where, torch.cat([k for _, k, _ in run], 1),  # [n_kv, m, d]
                             torch.cat([v for _, _, v in run], 1), rope_delta=self._deltas(shifts))

    def _deltas(self, shifts: tuple[tuple[int, int], ...]) -> torch.Tensor:
        """Per-token deltas [sum n] of a run of chunks ((delta, n) each); the same for every layer, made once."""
        if shifts not in self._delta_memo:
            dev = self.cache.keys.device
            delta, n = (torch.tensor(x, dtype=torch.int64, device=dev) for x in zip(*shifts, strict=True))
            self._delta_memo[shifts] = torch.repeat_interleave(delta, n)  # [sum n]
        return self._delta_memo[shifts]

    def _layer(self, p: _Pending, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer` of a pending chunk (k, v [n_kv, n, d]), from its entry, or recomputed when the entry is
        unusable there (p then reads its remaining layers from the fresh KV)."""
        n = len(p.token_ids)
        try:
            got, k, v = next(p.layers)
            want = (self.cache.keys.shape[1], n, self.cache.keys.shape[3])
            if got != layer or tuple(k.shape) != want or tuple(v.shape) != want:
                raise ValueError(f"layer {got} of shape {tuple(k.shape)}, expected layer {layer} of {want}")
        except Exception as err:  # StoreError (corrupt, I/O), ValueError, StopIteration: recompute the chunk
            reason = getattr(getattr(err, "reason", None), "value", "invalid_entry")
            msg = (f"{reason}: chunk at {p.offset}: stored KV unusable at layer {layer} "
                   f"({type(err).__name__}: {err}); recomputed")
            log.warning(msg)
            self.source.fallbacks.append(msg)
            self.hits, self.misses = self.hits - 1, self.misses + 1  # counted as a hit when it opened
            kv = self.source.recompute(p.token_ids, p.context)
            p.base_position, p.layers = kv.base_position, kv_layers(kv)
            for _ in range(layer):
                next(p.layers)
            got, k, v = next(p.layers)
        return k, v

    def close(self) -> None:
        for p in self.pending:
            close = getattr(p.layers, "close", None)
            if close is not None:
                close()
        self.pending.clear()
        self.in_hand.clear()
