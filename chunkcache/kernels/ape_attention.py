"""APE's attention for the query tokens over parallel-encoded contexts (arXiv 2502.05431).

APE (Adaptive Parallel Encoding) splits the keys a query sees into three groups: the shared prefix,
the contexts (encoded independently of each other) and the query tokens themselves. Each group is
attended separately; the context group uses temperature T (logits / T) and its log-sum-exp enters
the merge of the groups as T * LSE(logits / T) + log S (the scaling factor S). Per key that is

    l'_j = l_j / T + log S + (T - 1) * LSE_{i in contexts}(l_i / T)     for context keys j,
    l'_j = l_j                                                           otherwise,

followed by one ordinary softmax over all visible keys: the same output as APE's three-way merge.
T = S = 1 leaves every logit unchanged (plain attention). Only queries at or after the end of the
context span are tempered (the suffix and generated tokens); context rows, if any, read plainly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ContextTemper:
    """Key span [start, end) of the parallel contexts, APE's temperature T and scaling factor S."""

    start: int
    end: int
    temperature: float = 0.9
    scale: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"context span must satisfy 0 <= start <= end, got [{self.start}, {self.end})")
        if self.temperature <= 0 or self.scale <= 0:
            raise ValueError(f"temperature and scale must be > 0, got {self.temperature}, {self.scale}")


def tempered_logits(scores: torch.Tensor, rows_after: torch.Tensor, temper: ContextTemper) -> torch.Tensor:
    """scores [h, m, k_end] fp32 (masked, scaled) -> APE logits; rows_after [m] bool: rows that are tempered."""
    c0, c1 = temper.start, min(temper.end, scores.shape[-1])
    if c1 <= c0:
        return scores
    ctx = scores[..., c0:c1] / temper.temperature  # [h, m, c]
    lse = torch.logsumexp(ctx, dim=-1, keepdim=True)  # [h, m, 1]
    new = ctx + math.log(temper.scale) + (temper.temperature - 1.0) * lse
    out = scores.clone()
    out[..., c0:c1] = torch.where(rows_after[None, :, None], new, scores[..., c0:c1])
    return out


def ape_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Any, scale: float,
                      temper: ContextTemper) -> torch.Tensor:
    """q [n_heads, m, d]; k, v [n_kv, >= kv_len, d] by position; plan: an AttentionPlan (blocks, not square).

    Returns [n_heads, m, d] in q's dtype. Math in fp32 over each block's keys [0, k_end).
    """
    n_heads, m, d = q.shape
    g = n_heads // k.shape[0]
    out = torch.empty_like(q)
    pos = plan.q_positions.to(q.device)
    blocks = plan.blocks or ((0, m, plan.kv_len, None),)
    for s, e, k_end, mask in blocks:
        kk = k[:, :k_end].float().repeat_interleave(g, dim=0)  # [n_heads, k_end, d]
        vv = v[:, :k_end].float().repeat_interleave(g, dim=0)
        scores = (q[:, s:e].float() @ kk.transpose(1, 2)) * scale  # [n_heads, e-s, k_end]
        if mask is not None:
            scores = scores + mask.float()
        elif plan.causal_square:
            p = pos[s:e]
            visible = torch.arange(k_end, device=q.device)[None, :] <= p[:, None]  # [e-s, k_end]
            scores = scores.masked_fill(~visible, float("-inf"))
        scores = tempered_logits(scores, pos[s:e] >= temper.end, temper)
        out[:, s:e] = (scores.softmax(-1) @ vv).to(q.dtype)
    return out
