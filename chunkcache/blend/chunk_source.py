"""Where the blender gets chunk KV: the store, or a precompute behind the fixed precompute context.

One key space: a chunk's key is (model, the context it was computed behind, its tokens), so the same passage
behind the same context is one entry whether a RAG request or an agent put it there. A generated response is
an ordinary entry too, keyed by RESPONSE_CONTEXT: its KV as the generating turn computed it, at position 0.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Protocol

import torch

from chunkcache.blend.segment import SegmentKV, rotate
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.keys import chunk_key

log = logging.getLogger(__name__)

RESPONSE_CONTEXT = (2**32 - 1,)  # not a token: marks KV computed inside the generating agent's prompt


class KVStore(Protocol):
    def get(self, key: str, fingerprint: str, device: str = "cpu") -> ChunkKV | None: ...

    def put(self, kv: ChunkKV) -> None: ...


def validate_chunk_kv(kv: ChunkKV, runner: ModelRunner, token_ids: tuple[int, ...] | None = None) -> None:
    """Raise ValueError naming the problem when kv cannot be placed in this runner's cache."""
    if kv.fingerprint != runner.fingerprint:
        raise ValueError(f"chunk {kv.key[:12]}: fingerprint {kv.fingerprint} is from another model or tokenizer "
                         f"(this model: {runner.fingerprint})")
    want = (runner.n_layers, runner.n_kv_heads, kv.num_tokens, runner.head_dim)
    if tuple(kv.keys.shape) != want:
        raise ValueError(f"chunk {kv.key[:12]}: KV shape {tuple(kv.keys.shape)} does not match the model {want}")
    if token_ids is not None and kv.token_ids != tuple(token_ids):
        raise ValueError(f"chunk {kv.key[:12]}: cached token ids differ from the request's chunk")


class ChunkSource:
    """Chunk KV by content: store hit, or precompute behind `context_ids` and put.

    The prefix itself is a chunk computed behind an empty context at position 0, so it is exact.
    `fallbacks` collects "<reason>: <detail>" for every unusable entry met (the store's own faults
    too, when its get/get_layers/put take `faults=`); the blender moves them into the request's stats.
    """

    def __init__(self, runner: ModelRunner, store: KVStore, context_ids: tuple[int, ...]) -> None:
        self.runner = runner
        self.store = store
        self.context_ids = tuple(context_ids)
        self.fallbacks: list[str] = []
        self._tells = {name: "faults" in inspect.signature(getattr(store, name)).parameters
                       for name in ("get", "get_layers", "put") if hasattr(store, name)}

    def _faults(self, method: str) -> dict:
        """{"faults": self.fallbacks} for store methods that report their faults into a list."""
        return {"faults": self.fallbacks} if self._tells.get(method) else {}

    def flush(self) -> None:
        """Wait for the store's background writes (every tier, Redis: other replicas, holds what was put);
        a store without them has no flush."""
        flush = getattr(self.store, "flush", None)
        if flush is not None:
            flush()

    def holds(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] | None = None) -> bool:
        """The store says it holds the entry, without reading it (False from a store that cannot tell)."""
        contains = getattr(self.store, "contains", None)
        return bool(contains(self.key(token_ids, context_ids))) if contains is not None else False

    def key(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] | None = None) -> str:
        ctx = self.context_ids if context_ids is None else context_ids
        return chunk_key(self.runner.fingerprint, ctx, token_ids)

    def get(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] | None = None) -> tuple[ChunkKV, bool]:
        """(kv, hit). An unusable cached entry is reported in `fallbacks` and recomputed."""
        ctx = self.context_ids if context_ids is None else context_ids
        key = self.key(token_ids, ctx)
        kv = self.store.get(key, self.runner.fingerprint, device=str(self.runner.device), **self._faults("get"))
        if kv is not None:
            try:
                validate_chunk_kv(kv, self.runner, token_ids)
                return kv, True
            except ValueError as err:
                log.warning("recomputing: %s", err)
                self.fallbacks.append(f"invalid_entry: {err}; recomputed")
        return self.recompute(token_ids, ctx), False

    def open_layers(self, token_ids: tuple[int, ...], response: bool = False,
                    context_ids: tuple[int, ...] | None = None) -> tuple[Iterator[Layer], int, str]:
        """(layers, base_position, origin) for a chunk behind the default context, or behind context_ids when
        given (response: a stored generated response first). layers yields (layer, k, v), k/v [n_kv, L, d];
        from a store that streams, a reader thread runs ahead. origin: "response" | "chunk_hit" | "computed"."""
        get_layers = getattr(self.store, "get_layers", None)
        if get_layers is None:
            if context_ids is not None:
                kv, hit = self.get(token_ids, context_ids)
                return kv_layers(kv), kv.base_position, "chunk_hit" if hit else "computed"
            kv, origin = self.find(token_ids, response)
            return kv_layers(kv), kv.base_position, origin
        keys = ((self.response_key(token_ids), "response"),) if response else ()
        for key, origin in (*keys, (self.key(token_ids, context_ids), "chunk_hit")):
            stream = get_layers(key, self.runner.fingerprint, device=str(self.runner.device), borrow=True,
                                **self._faults("get_layers"))
            if stream is None:
                continue
            if stream.token_ids == tuple(token_ids) and stream.n_layers == self.runner.n_layers:
                return iter(stream), stream.base_position, origin
            stream.close()
            msg = (f"invalid_entry: chunk {key[:12]}: stored entry does not match the request's tokens "
                   "or the model; recomputed")
            log.warning(msg)
            self.fallbacks.append(msg)
        kv = self.recompute(token_ids, context_ids)
        return kv_layers(kv), kv.base_position, "computed"

    def response_key(self, token_ids: tuple[int, ...]) -> str:
        return self.key(token_ids, RESPONSE_CONTEXT)

    def find(self, token_ids: tuple[int, ...], response: bool = False) -> tuple[ChunkKV, str]:
        """(kv, origin): a stored response (when `response`), else the chunk behind the default context."""
        if response:
            kv = self.store.get(self.response_key(token_ids), self.runner.fingerprint, device=str(self.runner.device),
                                **self._faults("get"))
            if kv is not None:
                try:
                    validate_chunk_kv(kv, self.runner, token_ids)
                    return kv, "response"
                except ValueError as err:
                    log.warning("ignoring response entry: %s", err)
                    self.fallbacks.append(f"invalid_entry: {err}; recomputed")
        kv, hit = self.get(token_ids)
        return kv, "chunk_hit" if hit else "computed"

    def base(self, token_ids: tuple[int, ...], response: bool = False) -> tuple[SegmentKV, str]:
        """(KV in its own frame, origin): `find`, keys rotated back to position 0."""
        kv, origin = self.find(token_ids, response)
        keys = rotate(kv.keys, -kv.base_position, self.runner.inv_freq, self.runner.use_triton)
        return SegmentKV(kv.token_ids, keys, kv.values), origin

    def put_response(self, token_ids: tuple[int, ...], keys: torch.Tensor, values: torch.Tensor, offset: int) -> str:
        """Store a generated response's KV (keys/values [n_layers, n_kv, L, d] at positions offset..) as an
        ordinary entry under RESPONSE_CONTEXT, at position 0. Returns its key."""
        ids = tuple(int(t) for t in token_ids)
        key = self.response_key(ids)
        keys = rotate(keys, -offset, self.runner.inv_freq, self.runner.use_triton)  # frame 0
        self.store.put(ChunkKV(key, self.runner.fingerprint, ids, 0, keys, values.clone()), **self._faults("put"))
        return key

    def recompute(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] | None = None) -> ChunkKV:
        """Precompute behind `context_ids` (default: the default context) and put, replacing any entry."""
        kv = self.compute(token_ids, self.context_ids if context_ids is None else context_ids)
        self.store.put(kv, **self._faults("put"))
        return kv

    @torch.inference_mode()
    def compute(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...]) -> ChunkKV:
        """Prefill [context][chunk] and keep the chunk's own K/V ([n_layers, n_kv, L, d]). The context's KV is
        its own entry; a context that extends the default one (a FusionRAG context: prefix + neighbours) takes
        the default context's entry and computes the rest, so no entry is kept for the one-off context."""
        p, n = len(context_ids), len(token_ids)
        base = len(self.context_ids)
        known = context_ids[:base] if 0 < base < p and context_ids[:base] == self.context_ids else context_ids
        cache = self.runner.new_cache(p + n)
        if known:
            ctx, _ = self.get(known, ())
            cache.write(slice(None), slice(0, len(known)), ctx.keys, ctx.values)
        rest = tuple(context_ids[len(known):]) + tuple(token_ids)
        self.runner.extend(torch.tensor(rest, dtype=torch.int64, device=self.runner.device), cache)
        return ChunkKV(self.key(token_ids, context_ids), self.runner.fingerprint, tuple(token_ids), p,
                       cache.keys[:, :, p:p + n].clone(), cache.values[:, :, p:p + n].clone())


Layer = tuple[int, torch.Tensor, torch.Tensor]


def kv_layers(kv: ChunkKV | SegmentKV) -> Iterator[Layer]:
    """(layer, k [n_kv, L, d], v [n_kv, L, d]) for every layer of a ChunkKV or SegmentKV."""
    for layer in range(kv.keys.shape[0]):
        yield layer, kv.keys[layer], kv.values[layer]


class DictStore:
    """Unbounded in-process store: the smallest thing that satisfies KVStore."""

    def __init__(self) -> None:
        self._items: dict[str, ChunkKV] = {}

    def get(self, key: str, fingerprint: str, device: str = "cpu") -> ChunkKV | None:
        kv = self._items.get(key)
        return None if kv is None or kv.fingerprint != fingerprint else kv.to(device)

    def put(self, kv: ChunkKV) -> None:
        self._items[kv.key] = kv
