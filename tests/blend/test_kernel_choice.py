"""The engine's kernel choice (ModelRunner(kernels=...), config `kernels = auto|torch|cpp|triton`) reaches every
kernel dispatch on the request path: attention, RoPE shift on placement, deviation, and rotations to frame 0."""

import pytest
import torch

import chunkcache.kernels.deviation as deviation
import chunkcache.kernels.rope_shift as rope_shift
import chunkcache.runner.runner as runner_module
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.runner import ModelRunner


@pytest.fixture
def dispatched(monkeypatch):
    """Records (kernel module, use_triton or the attention impl) at every dispatch; the torch reference then runs."""
    seen = []
    for mod in (deviation, rope_shift):
        name = mod.__name__.rsplit(".", 1)[1]
        monkeypatch.setattr(mod, "want_triton", lambda use, *t, _n=name: seen.append((_n, use)) or False)
    real = runner_module.sparse_query_attention
    monkeypatch.setattr(runner_module, "sparse_query_attention",
                        lambda *a, impl, march: seen.append(("sparse_attention", impl)) or real(*a, impl="torch"))
    return seen


@pytest.mark.parametrize("kernels,use,impl", [("torch", False, "torch"), ("triton", True, "triton"),
                                              ("cpp", False, "cpp")])
def test_kernel_choice_reaches_every_dispatch(dispatched, kernels, use, impl):
    from transformers import LlamaConfig, LlamaForCausalLM  # not at collection: it imports triton.language

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512)  # head_dim 64: the C++ kernel takes it
    runner = ModelRunner(LlamaForCausalLM(cfg).eval(), kernels=kernels)
    g = torch.Generator().manual_seed(3)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in (20, 33, 17)]
    source = ChunkSource(runner, DictStore(), context_ids=(1, 2, 3))
    Blender(runner, source).prefill(BlendRequest.of((1, 2, 3), chunks, (7, 8, 9, 10)),
                                    BlendConfig(mode="cacheblend", recompute_ratio=0.3))
    source.base(chunks[1])  # an agent placeholder's base: keys rotated back to position 0
    kinds = [n for n, _ in dispatched]
    assert set(kinds) == {"deviation", "rope_shift", "sparse_attention"}
    assert {use for n, use in dispatched if n != "sparse_attention"} == {use}
    impls = {x for n, x in dispatched if n == "sparse_attention"}
    assert impl in impls and impls <= {impl, "torch"}  # causal squares (chunk precompute) take SDPA
