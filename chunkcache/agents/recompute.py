"""CacheBlend-style selective recompute over a cache whose context KV is already placed.

Positions [start, suffix_start) hold reused KV (placeholder bases or anchor estimates), positions
from suffix_start on are the suffix, always computed. Layers before `check_layer` are computed for
every candidate; at the check layer the fresh K/V are compared with the placed ones and only the
`count` most deviating candidates (plus the suffix) carry on; their fresh K/V overwrite the cache.
Same pieces as blend.blender: runner.qkv / attend_mlp / forward_layer and blend.selection.
"""

from __future__ import annotations

import torch

from chunkcache.blend.selection import deviation_scores, top_tokens
from chunkcache.kernels.sparse_attention import plan_sparse_attention
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@torch.inference_mode()
def selective_recompute(runner: ModelRunner, cache: KVCache, ids: torch.Tensor, start: int, suffix_start: int,
                        count: int, check_layer: int, deviation_on: str = "kv") -> tuple[torch.Tensor, torch.Tensor]:
    """ids [n]: the prompt. Returns (last-layer hidden of the suffix rows [n - suffix_start, H],
    recomputed candidate positions [count'])."""
    r, n = runner, ids.numel()
    positions = torch.arange(start, n)  # candidates then suffix, increasing
    n_cand = suffix_start - start
    check = check_layer if count < n_cand and check_layer < r.n_layers else None
    cache.reserve(n)
    hidden = r.embed(ids[positions])  # [n_cand + n_suffix, H]
    plan = plan_sparse_attention(positions, n, dtype=r.dtype)
    for layer in range(r.n_layers):
        if layer != check:
            hidden = r.forward_layer(layer, hidden, positions, cache, plan)
            continue
        q, k, v = r.qkv(layer, hidden, positions)
        cand = positions[:n_cand]
        cached_k, cached_v = cache.keys[layer][:, cand], cache.values[layer][:, cand]  # [n_kv, n_cand, d]
        scores = deviation_scores(k[:, :n_cand], cached_k, v[:, :n_cand], cached_v, deviation_on)
        keep = top_tokens(scores, count)
        cache.write(layer, positions, k, v)
        rows = torch.cat((keep, torch.arange(n_cand, positions.numel())))  # kept candidates + suffix
        hidden, q, positions, n_cand = hidden[rows], q[:, rows], positions[rows], keep.numel()
        plan = plan_sparse_attention(positions, n, dtype=r.dtype)
        hidden = r.attend_mlp(layer, hidden, q, cache, plan)
    return hidden[n_cand:], positions[:n_cand]
