"""CacheBlend recomputes the tokens whose KV deviates most at the check layer, not any tokens of the budget.

The expected set is computed here from its definition: at the check layer (1) the fresh K/V of every token
are full prefill's (layer 0 is computed for every token), the cached ones are the naive cache's (chunks
placed by RoPE shift); the squared L2 per token ranks the candidates. The tokens the blender recomputed are
read back from its cache: at the last layer they differ from the naive cache.
"""

import pytest
import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest

PREFIX = (1, 2, 3)


def _request(seed: int) -> BlendRequest:
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in (20, 33, 17, 25)]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (6,), generator=g).tolist())


def _deviation(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """[n_kv, T, d] each -> [T] squared L2 over heads and channels."""
    return (fresh.double() - cached.double()).pow(2).sum(dim=(0, 2))


@pytest.mark.parametrize("on", ["k", "v", "kv"])
def test_cacheblend_recomputes_the_most_deviating_tokens(tiny_blender, on: str) -> None:
    req = _request(seed=7)
    full = tiny_blender.prefill(req, BlendConfig(mode="full"))
    naive = tiny_blender.prefill(req, BlendConfig(mode="naive"))
    blend = tiny_blender.prefill(req, BlendConfig(mode="cacheblend", recompute_ratio=0.2, deviation_on=on))
    ctx = slice(len(PREFIX) + len(req.chunks[0]), req.suffix_start)  # the candidates: chunks placed by shift
    dk = _deviation(full.cache.keys[1, :, ctx], naive.cache.keys[1, :, ctx])
    dv = _deviation(full.cache.values[1, :, ctx], naive.cache.values[1, :, ctx])
    score = {"k": dk, "v": dv, "kv": dk / dk.mean() + dv / dv.mean()}[on]
    count = blend.stats.recomputed_tokens
    assert count == round(0.2 * req.context_len) and count < score.numel()
    expected = set(score.topk(count).indices.tolist())
    last = tiny_blender.runner.n_layers - 1
    changed = (blend.cache.keys[last, :, ctx] - naive.cache.keys[last, :, ctx]).abs().amax(dim=(0, 2)) > 1e-6
    assert set(changed.nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("mass,count", [(0.5, 1), (0.51, 2), (0.8, 2), (0.85, 3), (1.0, 4)])
def test_adaptive_count_is_the_fewest_tokens_covering_the_mass(mass: float, count: int) -> None:
    from chunkcache.blend.selection import adaptive_count

    scores = torch.tensor([1.0, 5.0, 1.0, 3.0])  # sorted: 5 3 1 1, cumulative share 0.5 0.8 0.9 1.0
    assert adaptive_count(scores, mass) == count
    assert adaptive_count(torch.zeros(3), 0.5) == 0 and adaptive_count(torch.zeros(0), 0.5) == 0
