"""Attention for a sorted subset of query tokens over the whole merged KV, causal by position.

The merged cache is laid out by position: key j sits at position j. Query i (position p_i) sees
keys 0..p_i. GQA: query head h reads KV head h // (n_heads / n_kv_heads), as in HF repeat_kv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AttentionPlan:
    """Built once per request from the query positions; reused by every layer.

    q_positions: [m] int64, strictly increasing. kv_len: keys visible to the last query's layer call.
    blocks: (q_start, q_end, k_end, mask [q_end-q_start, k_end] bool or None) for the CPU path: each
    block of queries reads keys [0, k_end) only, so little of the causal triangle is wasted.
    """

    q_positions: torch.Tensor
    kv_len: int
    causal_square: bool
    blocks: tuple[tuple[int, int, int, torch.Tensor | None], ...]


def plan_sparse_attention(q_positions: torch.Tensor, kv_len: int, num_blocks: int = 16) -> AttentionPlan:
    """Split sorted query positions into blocks and precompute their causal masks."""
    if q_positions.dim() != 1 or q_positions.numel() == 0:
        raise ValueError(f"q_positions must be a non-empty 1-D tensor, got {tuple(q_positions.shape)}")
    pos = q_positions.to(torch.int64).cpu()
    if pos.numel() > 1 and bool((pos[1:] <= pos[:-1]).any()):
        raise ValueError("q_positions must be strictly increasing")
    if int(pos[-1]) >= kv_len or int(pos[0]) < 0:
        raise ValueError(f"q_positions must lie in [0, kv_len={kv_len})")
    m = pos.numel()
    square = m == kv_len
    blocks = []
    if not square:
        step = max(1, -(-m // num_blocks))
        for s in range(0, m, step):
            e = min(m, s + step)
            p = pos[s:e]
            k_end = int(p[-1]) + 1
            needs_mask = int(p[0]) + 1 < k_end
            mask = (torch.arange(k_end)[None, :] <= p[:, None]) if needs_mask else None  # [e-s, k_end]
            if mask is not None:
                mask = mask.to(q_positions.device)
            blocks.append((s, e, k_end, mask))
    return AttentionPlan(q_positions.to(torch.int64), kv_len, square, tuple(blocks))


def sparse_query_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                               scale: float) -> torch.Tensor:
    """q: [n_heads, m, d]; k, v: [n_kv, >= kv_len, d] (merged cache, by position). Returns [n_heads, m, d]."""
    n_heads, m, d = q.shape
    n_kv = k.shape[0]
    if n_heads % n_kv or k.shape != v.shape or k.shape[-1] != d or m != plan.q_positions.numel():
        raise ValueError(f"bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} for {m} planned queries")
    if k.shape[1] < plan.kv_len:
        raise ValueError(f"cache holds {k.shape[1]} positions, plan needs {plan.kv_len}")
    g = n_heads // n_kv
    if plan.causal_square:
        return F.scaled_dot_product_attention(q[None], k[None, :, :m], v[None, :, :m], is_causal=True,
                                              scale=scale, enable_gqa=g > 1)[0]
    out = torch.empty_like(q)
    for s, e, k_end, mask in plan.blocks:
        out[:, s:e] = F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, :k_end], v[None, :, :k_end],
                                                     attn_mask=mask, scale=scale, enable_gqa=g > 1)[0]
    return out


def sparse_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                           scale: float) -> torch.Tensor:
    """Dispatch: Triton kernel on CUDA when available, else the torch reference."""
    return sparse_query_attention_ref(q, k, v, plan, scale)
