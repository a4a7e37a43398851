"""KV of a token span in its own frame (RoPE positions 0..L-1): what the KVCOMM step estimates and places."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chunkcache.kernels.rope_shift import rope_shift
from chunkcache.runner.runner import ModelRunner


@dataclass(frozen=True)
class SegmentKV:
    """keys, values: [n_layers, n_kv_heads, L, head_dim]; keys carry RoPE positions 0..L-1, so placing the span
    at offset o is one rotation by o."""

    token_ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def empty(cls, runner: ModelRunner) -> "SegmentKV":
        z = torch.empty((runner.n_layers, runner.n_kv_heads, 0, runner.head_dim), dtype=runner.dtype,
                        device=runner.device)  # [n_layers, n_kv, 0, d]
        return cls((), z, z.clone())


def rotate(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """keys [..., T, d] rotated by `delta` positions (a new tensor). use_triton: the engine's kernel choice."""
    if delta == 0:
        return keys.clone()
    deltas = torch.full((1,), delta, dtype=torch.int64, device=keys.device)  # every token
    return rope_shift(keys.contiguous(), deltas, inv_freq.to(keys.device), use_triton=use_triton)
