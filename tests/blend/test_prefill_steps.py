"""The prefill in pieces (`Blender.prefill_steps`): full and prefix prompts in slices compute what one call does."""

import pytest
import torch

from chunkcache.blend.blender import Blender, run_steps
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.prefix_cache import PrefixCache
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.runner import ModelRunner
from tiny_models import tiny_llama

PREFIX = (1, 2, 3)


@pytest.fixture(scope="module")
def runner64() -> ModelRunner:
    return ModelRunner(tiny_llama(seed=2).to(torch.float64), kernels="torch")


def _request(seed: int) -> BlendRequest:
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in (21, 30, 17)]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (6,), generator=g).tolist())


@pytest.mark.parametrize("mode", ["full", "prefix"])
def test_slices_compute_what_one_call_computes(runner64, mode):
    def blender() -> Blender:  # fresh stores: both runs see the same misses
        return Blender(runner64, ChunkSource(runner64, DictStore(), context_ids=PREFIX), prefix_cache=PrefixCache(2))

    req = _request(0)
    whole = blender().prefill(req, BlendConfig(mode=mode), reserve=4)
    steps = blender().prefill_steps(req, BlendConfig(mode=mode), reserve=4, slice_tokens=10)
    sizes = []
    while True:
        try:
            sizes.append(next(steps))
        except StopIteration as done:
            sliced = done.value
            break
    computed = req.num_tokens - sliced.stats.reused_tokens
    assert sum(sizes) == computed and max(sizes) == 10 and len(sizes) == -(-computed // 10)
    assert sliced.stats.as_dict() | {"timings": {}} == whole.stats.as_dict() | {"timings": {}}
    n = req.num_tokens
    assert sliced.cache.length == n and sliced.cache.capacity >= n + 4
    torch.testing.assert_close(sliced.logits, whole.logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(sliced.cache.keys[:, :, :n], whole.cache.keys[:, :, :n], atol=1e-10, rtol=0)


def test_a_selective_mode_is_one_piece(runner64):
    blender = Blender(runner64, ChunkSource(runner64, DictStore(), context_ids=PREFIX))
    req = _request(1)
    steps = blender.prefill_steps(req, BlendConfig(mode="cacheblend"), slice_tokens=10)
    cost = next(steps)
    res = run_steps(steps)
    assert cost == req.num_tokens - res.stats.reused_tokens > 10
    torch.testing.assert_close(res.logits, blender.prefill(req, BlendConfig(mode="cacheblend")).logits)
