"""The engine's kernel choice (ModelRunner(use_triton=...), config `kernels = torch|triton|auto`) reaches every
kernel dispatch on the request path: attention, RoPE shift on placement, deviation, and rotations to frame 0."""

import pytest
import torch

import chunkcache.kernels.deviation as deviation
import chunkcache.kernels.rope_shift as rope_shift
import chunkcache.kernels.sparse_attention as sparse_attention
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.runner import ModelRunner


@pytest.fixture
def dispatched(monkeypatch):
    """Records (kernel module, use_triton) at every dispatch; the torch reference then runs."""
    seen = []
    for mod in (deviation, rope_shift, sparse_attention):
        name = mod.__name__.rsplit(".", 1)[1]
        monkeypatch.setattr(mod, "want_triton", lambda use, *t, _n=name: seen.append((_n, use)) or False)
    return seen


@pytest.mark.parametrize("choice", [False, True])
def test_kernel_choice_reaches_every_dispatch(tiny_runner, dispatched, choice):
    runner = ModelRunner(tiny_runner.model, use_triton=choice)
    g = torch.Generator().manual_seed(3)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in (20, 33, 17)]
    source = ChunkSource(runner, DictStore(), context_ids=(1, 2, 3))
    Blender(runner, source).prefill(BlendRequest.of((1, 2, 3), chunks, (7, 8, 9, 10)),
                                    BlendConfig(mode="cacheblend", recompute_ratio=0.3))
    source.base(chunks[1])  # an agent placeholder's base: keys rotated back to position 0
    kinds = [n for n, _ in dispatched]
    assert set(kinds) == {"deviation", "rope_shift", "sparse_attention"}
    assert {use for _, use in dispatched} == {choice}
