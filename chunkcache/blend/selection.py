"""Which context tokens to recompute: deviation scores and budgets."""

from __future__ import annotations

import torch

from chunkcache.kernels.deviation import token_deviation


def deviation_scores(fresh_k: torch.Tensor, cached_k: torch.Tensor, fresh_v: torch.Tensor, cached_v: torch.Tensor,
                     on: str, use_triton: bool | None = None) -> torch.Tensor:
    """Per-token deviation [T] of fresh vs cached K/V ([n_kv, T, d] each).

    on="k" or "v": squared L2 of that tensor; "kv": both, each divided by its mean so neither dominates.
    use_triton: the engine's kernel choice (None: Triton on CUDA, torch elsewhere).
    """
    if on == "k":
        return token_deviation(fresh_k, cached_k, use_triton=use_triton)
    if on == "v":
        return token_deviation(fresh_v, cached_v, use_triton=use_triton)
    dk = token_deviation(fresh_k, cached_k, use_triton=use_triton)
    dv = token_deviation(fresh_v, cached_v, use_triton=use_triton)
    return dk / dk.mean().clamp_min(1e-12) + dv / dv.mean().clamp_min(1e-12)


def adaptive_count(scores: torch.Tensor, mass: float) -> int:
    """Smallest number of tokens whose deviation covers `mass` of the total deviation."""
    if scores.numel() == 0:
        return 0
    s = scores.sort(descending=True).values
    total = float(s.sum())
    if total <= 0:
        return 0
    return int(torch.searchsorted(s.cumsum(0), torch.tensor(mass * total, dtype=s.dtype, device=s.device))) + 1


def top_tokens(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices [count] of the highest scores, sorted ascending (so positions stay increasing)."""
    count = max(0, min(count, scores.numel()))
    return scores.topk(count).indices.sort().values


def random_tokens(n: int, count: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A random subset [count] of range(n), sorted ascending, on `device` (drawn on the CPU: same set everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen, device="cpu")[: max(0, min(count, n))].sort().values.to(device)
