"""Selective recompute (CacheBlend's partial prefill) over a cache whose context KV is already placed.

Rows start as the candidates then the suffix, positions increasing. Layers before the first check
layer are computed for every row. At each check layer the fresh K/V of the candidates are compared
with the placed ones and the set is narrowed (gradual filtering: the budget doubled per remaining
check, down to `budget` at the last); the fresh K/V of every row computed there overwrite the cache.
From then on only the kept candidates and the suffix carry hidden states. The suffix is always kept,
and so are `pinned` candidates (e.g. the first tokens of each chunk): they count inside the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from chunkcache.blend.selection import adaptive_count, deviation_scores, top_tokens
from chunkcache.kernels.ape_attention import ContextTemper
from chunkcache.kernels.sparse_attention import plan_sparse_attention
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@torch.inference_mode()
def selective_recompute(runner: ModelRunner, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, n_cand: int,
                        budget: int, check_layers: Sequence[int], deviation_on: str = "kv",
                        adaptive_mass: float | None = None, weights: torch.Tensor | None = None,
                        before_layer: Callable[[int], None] | None = None, pinned: torch.Tensor | None = None,
                        temper: ContextTemper | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every layer for rows at `positions` [n_cand + n_suffix] (candidates first, then the suffix).

    ids [n]: the whole prompt (row tokens are ids[positions]). check_layers: empty = no selection (all
    rows recomputed). adaptive_mass: at the last check keep the smallest set covering this share of the
    deviation (capped by budget). weights [n] (by position): multiply the deviation (query-aware
    selection). before_layer(l): called before layer l (layer-wise loading of the placed KV).
    pinned [n_cand] bool: candidates kept at every check whatever their deviation (inside the budget).
    temper: APE's tempered attention for the rows after the context span (see kernels/ape_attention.py).
    Returns (last-layer hidden [n_kept + n_suffix, H], kept candidate positions [n_kept]).
    """
    r, n = runner, ids.numel()
    checks = [layer for layer in check_layers if layer < r.n_layers]
    hidden = r.embed(ids[positions])  # [rows, H]
    plan = plan_sparse_attention(positions, n, dtype=r.dtype, temper=temper)
    for layer in range(r.n_layers):
        if before_layer is not None:
            before_layer(layer)
        if layer not in checks:
            hidden = r.forward_layer(layer, hidden, positions, cache, plan)
            continue
        q, k, v = r.qkv(layer, hidden, positions)
        cand = positions[:n_cand]
        cached_k, cached_v = cache.keys[layer][:, cand], cache.values[layer][:, cand]  # [n_kv, n_cand, d]
        scores = deviation_scores(k[:, :n_cand], cached_k, v[:, :n_cand], cached_v, deviation_on, r.use_triton)
        if weights is not None:
            scores = scores * weights[cand]
        if pinned is not None:
            scores = scores.masked_fill(pinned, float("inf"))
        remaining = len(checks) - 1 - checks.index(layer)
        count = min(n_cand, budget * 2 ** remaining)
        if remaining == 0 and adaptive_mass is not None:
            count = min(count, adaptive_count(scores, adaptive_mass))
        keep = top_tokens(scores, count)
        if pinned is not None:
            pinned = pinned[keep]
        cache.write(layer, positions, k, v, end=plan.q_end)
        suffix_rows = torch.arange(n_cand, positions.numel(), device=positions.device)
        rows = torch.cat((keep, suffix_rows))  # [n_kept + n_suffix]: kept candidates, then the suffix
        hidden, q, positions, n_cand = hidden[rows], q[:, rows], positions[rows], keep.numel()
        plan = plan_sparse_attention(positions, n, dtype=r.dtype, temper=temper)
        hidden = r.attend_mlp(layer, hidden, q, cache, plan)
    return hidden, positions[:n_cand]
