"""Deterministic ChunkKV factory shared by the store tests and their subprocess workers."""

from __future__ import annotations

import torch

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.keys import chunk_key

FP = "test-model/v1"


def make_kv(seed: int, n_tokens: int = 16, *, n_layers: int = 4, n_kv: int = 2, head_dim: int = 8,
            fingerprint: str = FP, dtype: torch.dtype = torch.float32) -> ChunkKV:
    """Same seed and shape -> bit-identical ChunkKV (tokens and tensors), in any process."""
    tokens = tuple((seed * 7919 + i) % 50000 for i in range(n_tokens))
    g = torch.Generator().manual_seed(seed)
    shape = (n_layers, n_kv, n_tokens, head_dim)
    keys = torch.randn(shape, generator=g).to(dtype)
    values = torch.randn(shape, generator=g).to(dtype)
    return ChunkKV(chunk_key(fingerprint, [1], tokens), fingerprint, tokens, 1, keys, values)


def same(a: ChunkKV | None, b: ChunkKV) -> bool:
    """Whole and exact: identity, tokens and every tensor bit."""
    return (a is not None and a.key == b.key and a.fingerprint == b.fingerprint and a.token_ids == b.token_ids
            and a.base_position == b.base_position and a.keys.dtype == b.keys.dtype
            and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values))
