"""Base KV of a placeholder: its text's KV with keys in their own frame (RoPE positions 0..L-1).

Two kinds of base, both position-free:
  text a user supplied (question, passages) is prefilled behind the fixed precompute context
      (a ChunkSource chunk, keyed by that context) and rotated back to position 0;
  a generated response is stored as the generating agent computed it, rotated back to position 0,
      under the RESPONSE_CONTEXT key (no prefill: the KV is a by-product of decoding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from chunkcache.blend.chunk_source import ChunkSource, KVStore, validate_chunk_kv
from chunkcache.kernels.rope_shift import rope_shift
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.keys import chunk_key

log = logging.getLogger(__name__)

RESPONSE_CONTEXT = (2**32 - 1,)  # not a token: marks KV computed inside the generating agent's prompt


@dataclass(frozen=True)
class SegmentKV:
    """KV of a token span in its own frame. keys, values: [n_layers, n_kv_heads, L, head_dim];
    keys carry RoPE positions 0..L-1, so placing the span at offset o is one rotation by o."""

    token_ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def rotate(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """keys [..., T, d] rotated by `delta` positions (a new tensor)."""
    if delta == 0:
        return keys.clone()
    deltas = torch.full((keys.shape[-2],), delta, dtype=torch.int64, device=keys.device)
    return rope_shift(keys.contiguous(), deltas, inv_freq.to(keys.device))


class BaseSource:
    """Base KV by content: a stored response, else a chunk prefilled behind `context_ids`."""

    def __init__(self, runner: ModelRunner, store: KVStore, context_ids: tuple[int, ...]) -> None:
        self.runner = runner
        self.store = store
        self.chunks = ChunkSource(runner, store, context_ids)
        self.fallbacks: list[str] = []

    def response_key(self, token_ids: tuple[int, ...]) -> str:
        return chunk_key(self.runner.fingerprint, RESPONSE_CONTEXT, token_ids)

    def get(self, token_ids: tuple[int, ...]) -> tuple[SegmentKV, str]:
        """(base, origin) with origin "response" | "chunk_hit" | "computed"."""
        r = self.runner
        kv = self.store.get(self.response_key(token_ids), r.fingerprint, device=str(r.device))
        if kv is not None:
            try:
                validate_chunk_kv(kv, r, token_ids)
                return SegmentKV(kv.token_ids, rotate(kv.keys, -kv.base_position, r.inv_freq), kv.values), "response"
            except ValueError as err:
                log.warning("recomputing response base: %s", err)
                self.fallbacks.append(f"invalid_entry: {err}; recomputed")
        kv, hit = self.chunks.get(tuple(token_ids))
        self.fallbacks.extend(self.chunks.fallbacks)
        self.chunks.fallbacks.clear()
        keys = rotate(kv.keys, -kv.base_position, r.inv_freq)
        return SegmentKV(kv.token_ids, keys, kv.values), "chunk_hit" if hit else "computed"

    def put_response(self, token_ids: tuple[int, ...], keys: torch.Tensor, values: torch.Tensor, offset: int) -> str:
        """Store a generated response's KV (keys [n_layers, n_kv, L, d] at positions offset..) at position 0."""
        key = self.response_key(tuple(token_ids))
        self.store.put(ChunkKV(key, self.runner.fingerprint, tuple(int(t) for t in token_ids), 0,
                               rotate(keys, -offset, self.runner.inv_freq), values.clone()))
        return key
