"""With the kernels on (Triton interpreter), a cacheblend prefill matches the torch path on the same inputs."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.runner import ModelRunner


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=384, intermediate_size=512, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e5)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("mode", ["cacheblend", "full"])
def test_kernels_match_torch_path(model, mode):
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 300, (5,), generator=g).tolist()
    chunks = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (23, 31, 17)]
    req = BlendRequest.of(prefix, chunks, torch.randint(0, 300, (6,), generator=g).tolist())
    results = {}
    for kernels in ("torch", "triton"):
        runner = ModelRunner(model, kernels=kernels)
        blender = Blender(runner, ChunkSource(runner, DictStore(), tuple(prefix)))
        results[kernels] = blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.2))
    a, b = results["torch"], results["triton"]
    n = req.num_tokens
    assert a.stats.recomputed_tokens == b.stats.recomputed_tokens
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.cache.keys[:, :, :n], a.cache.keys[:, :, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.cache.values[:, :, :n], a.cache.values[:, :, :n], atol=1e-5, rtol=1e-5)
