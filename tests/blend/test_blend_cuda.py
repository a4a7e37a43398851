"""The blend and agents paths on CUDA agree with the CPU path (tiny llama, fp32). Skipped without CUDA."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.runner.decode import SamplingConfig, decode
from chunkcache.runner.runner import ModelRunner
from test_blender_modes import _request

sys.path.insert(0, str(Path(__file__).parents[1] / "agents"))
import agents_tiny  # noqa: E402

pytestmark = pytest.mark.cuda  # deselected where CUDA is absent (tests/conftest.py)


@pytest.fixture(scope="module")
def runners(tiny_runner):
    """(CPU runner, CUDA runner) over the same tiny llama weights."""
    return tiny_runner, ModelRunner(copy.deepcopy(tiny_runner.model).cuda())


@pytest.mark.parametrize("cfg", [BlendConfig(mode="full"), BlendConfig(mode="naive"),
                                 BlendConfig(mode="cacheblend", recompute_ratio=0.3),
                                 BlendConfig(mode="adaptive", recompute_ratio=0.5),
                                 BlendConfig(mode="cacheblend", selection="attention_deviation"),
                                 BlendConfig(mode="qcfuse", recompute_ratio=0.3, critical_layers=(1, 2)),
                                 BlendConfig(mode="prophet2", recompute_ratio=0.3)],
                         ids=lambda c: f"{c.mode}-{c.selection}")
def test_blend_cuda_matches_cpu(runners, cfg):
    req = _request()
    out = []
    for r in runners:
        blender = Blender(r, ChunkSource(r, DictStore(), context_ids=(1, 2, 3)))
        blender.prefill(req, cfg)  # cold: computes the chunks
        res = blender.prefill(req, cfg, reserve=8)
        toks = list(decode(r, res.cache, res.logits, SamplingConfig(max_new_tokens=8), set()))
        out.append((res, toks))
    (cpu, cpu_toks), (gpu, gpu_toks) = out
    assert gpu.cache.keys.is_cuda and gpu.logits.is_cuda
    assert gpu.stats.recomputed_tokens == cpu.stats.recomputed_tokens
    torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, atol=2e-3, rtol=2e-3)
    n = req.num_tokens
    torch.testing.assert_close(gpu.cache.keys[:, :, :n].cpu(), cpu.cache.keys[:, :, :n], atol=2e-3, rtol=2e-3)
    assert gpu_toks == cpu_toks


@pytest.mark.parametrize("mode", ["full", "kvcomm", "blend"])
def test_agents_cuda_matches_cpu(runners, mode):
    cfg = BlendConfig.named(mode)
    logits = []
    for r in runners:
        pre = agents_tiny.prefiller(r)
        for seed in (1, 2, 3):  # build anchors first
            pre.prefill(agents_tiny.prompt(seed), cfg)
        logits.append(pre.prefill(agents_tiny.prompt(7), cfg).logits)
    assert logits[1].is_cuda
    torch.testing.assert_close(logits[1].cpu(), logits[0], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("cfg", [BlendConfig(mode="blend", recompute_ratio=0.1, decode_correction=16),
                                 BlendConfig(mode="blend", recompute_ratio=0.1, decode_correction_steps=2)],
                         ids=["K16", "S2"])
def test_decode_correction_cuda_matches_cpu_and_converges_to_full_prefill(runners, cfg):
    """Decode-time correction on CUDA: the same tokens as on the CPU, and once its schedule is done the cache over
    the prompt is full prefill's on the same device."""
    req, sampling = _request(), SamplingConfig(max_new_tokens=10)
    n = req.num_tokens
    out = []
    for r in runners:
        blender = Blender(r, ChunkSource(r, DictStore(), context_ids=(1, 2, 3)))
        blender.prefill(req, cfg)  # cold: computes the chunks
        res = blender.prefill(req, cfg, reserve=16)
        corr = res.correction
        assert corr is not None and corr.per_step == cfg.correction_per_step(res.stats.decode_pending)
        toks = list(decode(r, res.cache, res.logits, sampling, set(), corr))
        assert corr.done  # 10 steps finish a schedule of at most ceil(n / 16) + 1 batches
        full = blender.prefill(req, BlendConfig(mode="full"), reserve=16).cache
        torch.testing.assert_close(res.cache.keys[:, :, :n], full.keys[:, :, :n], atol=2e-3, rtol=2e-3)
        out.append((res.cache.keys[:, :, :n], toks))
    (cpu_keys, cpu_toks), (gpu_keys, gpu_toks) = out
    assert gpu_toks == cpu_toks
    torch.testing.assert_close(gpu_keys.cpu(), cpu_keys, atol=2e-3, rtol=2e-3)
