"""Query-aware importance: how much attention the question suffix pays to each context token.

The suffix is run through every layer over the cache as it stands (chunk KV placed, nothing
recomputed: the naive merged cache). Each context position gets the attention mass the suffix
queries put on it, summed over layers and heads. A token the question never reads cannot move
the answer, however much its KV deviates; a token it reads a lot is worth recomputing.
"""

from __future__ import annotations

import torch

from chunkcache.kernels.sparse_attention import plan_sparse_attention
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@torch.inference_mode()
def suffix_attention_mass(runner: ModelRunner, cache: KVCache, suffix_ids: torch.Tensor) -> torch.Tensor:
    """Attention mass [start] on positions 0..start-1 from the suffix placed at start = cache.length,
    summed over layers and heads (see `suffix_attention_by_layer`)."""
    return suffix_attention_by_layer(runner, cache, suffix_ids).sum(0)


@torch.inference_mode()
def suffix_attention_by_layer(runner: ModelRunner, cache: KVCache, suffix_ids: torch.Tensor,
                              depth: int | None = None) -> torch.Tensor:
    """Attention mass [depth, start] on positions 0..start-1 from the suffix placed at start = cache.length,
    per layer 0..depth-1 (default: every layer), summed over heads and suffix queries. The pass stops after
    layer depth-1, so only those layers of the cache need to be present.

    Writes the suffix's K/V into the cache (positions start..start+ns-1) at those layers; callers that
    recompute the suffix later simply overwrite them.
    """
    start, ns = cache.length, suffix_ids.numel()
    positions = torch.arange(start, start + ns, device=runner.device)
    plan = plan_sparse_attention(positions, start + ns, dtype=runner.dtype)
    depth = runner.n_layers if depth is None else depth
    if not 1 <= depth <= runner.n_layers:
        raise ValueError(f"depth must be in 1..{runner.n_layers}, got {depth}")
    mass = torch.zeros(depth, start, dtype=torch.float32, device=runner.device)
    hidden = runner.embed(suffix_ids)
    for layer in range(depth):
        q, k, v = runner.qkv(layer, hidden, positions)
        cache.write(layer, positions, k, v, end=plan.q_end)
        mass[layer] = suffix_mass(q, cache.layer(layer)[0], start, runner.scale)
        if layer + 1 < depth:
            hidden = runner.attend_mlp(layer, hidden, q, cache, plan)
    return mass


def suffix_mass(q: torch.Tensor, keys: torch.Tensor, start: int, scale: float) -> torch.Tensor:
    """Attention mass [start] on positions 0..start-1 from suffix queries q [n_heads, ns, d] at positions
    start..start+ns-1 over keys [n_kv, >= start+ns, d] (causal inside the suffix), summed over heads and queries."""
    n_heads, ns, d = q.shape
    n_kv = keys.shape[0]
    g = n_heads // n_kv
    causal = torch.ones(ns, ns, dtype=torch.bool, device=q.device).tril()  # [ns, ns]
    qg = q.reshape(n_kv, g * ns, d)  # [n_kv, g*ns, d]: heads of a group stacked
    scores = (qg @ keys[:, : start + ns].transpose(1, 2)).float() * scale  # [n_kv, g*ns, start+ns]
    scores[..., start:].masked_fill_(~causal.repeat(g, 1), float("-inf"))
    return scores.softmax(-1)[..., :start].sum(dim=(0, 1))
