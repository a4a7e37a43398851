"""Sparse-query attention: reference vs explicit masked softmax; Triton and C++ kernels vs the reference."""

import dataclasses
import os
import platform
import subprocess
import sys

import pytest
import torch

from chunkcache.kernels import _cpp, sparse_attention
from chunkcache.kernels._cpp import build_error, runnable_isas
from chunkcache.kernels.sparse_attention import (cpu_kernel_applies, plan_sparse_attention, sparse_query_attention,
                                                 sparse_query_attention_cpu, sparse_query_attention_ref)

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Explicit float64 attention: query i at positions[i] sees keys 0..positions[i]; head h -> kv h // g."""
    g = q.shape[0] // k.shape[0]
    n = int(positions.max()) + 1
    kk = k[:, :n].double().repeat_interleave(g, dim=0)  # [n_heads, n, d]
    vv = v[:, :n].double().repeat_interleave(g, dim=0)  # [n_heads, n, d]
    scores = q.double() @ kk.transpose(1, 2) * scale  # [n_heads, m, n]
    visible = torch.arange(n)[None, :] <= positions[:, None]  # [m, n]
    scores = scores.masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ vv


def _case(n_kv: int, g: int, m: int, n: int, d: int, dtype: torch.dtype, seed: int, spare: int = 3):
    gen = torch.Generator().manual_seed(seed)
    positions = torch.sort(torch.randperm(n, generator=gen)[:m]).values
    q = torch.randn(n_kv * g, m, d, generator=gen).to(dtype)
    k = torch.randn(n_kv, n + spare, d, generator=gen).to(dtype)
    v = torch.randn(n_kv, n + spare, d, generator=gen).to(dtype)
    return q, k, v, positions


@pytest.mark.parametrize("n_kv,g,m,n", [(3, 3, 7, 40), (1, 8, 1, 1), (2, 1, 50, 50), (1, 3, 30, 200)])
def test_ref_matches_dense(n_kv, g, m, n):
    q, k, v, positions = _case(n_kv, g, m, n, 64, torch.float32, m + n)
    plan = plan_sparse_attention(positions, n)
    got = sparse_query_attention_ref(q, k, v, plan, 0.125)
    torch.testing.assert_close(got.double(), _dense(q, k, v, positions, 0.125), atol=1e-5, rtol=1e-5)


GRID = [  # n_kv, g, m, n, d
    (1, 1, 1, 1, 64),
    (2, 1, 5, 37, 64),
    (1, 3, 1, 23, 128),
    (3, 3, 13, 40, 64),
    (1, 8, 9, 50, 128),
    (2, 8, 3, 17, 64),
    (1, 3, 33, 33, 64),  # causal square
    (2, 1, 20, 90, 96),  # head_dim not a power of two
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_kv,g,m,n,d", GRID)
def test_triton_matches_ref(n_kv, g, m, n, d, dtype):
    q, k, v, positions = _case(n_kv, g, m, n, d, dtype, n_kv * g * m + n + d)
    plan = plan_sparse_attention(positions, n)
    got = sparse_query_attention(q, k, v, plan, d ** -0.5, impl="triton")
    want = sparse_query_attention_ref(q.float(), k.float(), v.float(), plan, d ** -0.5)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want, atol=TOL[dtype], rtol=TOL[dtype])


def test_triton_last_tokens_and_strided_views():
    q, k, v, _ = _case(2, 3, 4, 60, 64, torch.float32, 5)
    positions = torch.tensor([56, 57, 58, 59])  # the question suffix at the end of the prompt
    plan = plan_sparse_attention(positions, 60)
    q_t = q.transpose(0, 1).contiguous().transpose(0, 1)  # [n_heads, m, d] view of [m, n_heads, d]
    slot = torch.randn(2, 1, 2, 80, 64)  # K and V cache slots [2, batch, n_kv, capacity, d]
    slot[0, 0, :, :63], slot[1, 0, :, :63] = k, v
    got = sparse_query_attention(q_t, slot[0, 0, :, :70], slot[1, 0, :, :70], plan, 0.1, impl="triton")
    torch.testing.assert_close(got, sparse_query_attention_ref(q, k, v, plan, 0.1), atol=2e-5, rtol=2e-5)


def test_shape_errors():
    q, k, v, positions = _case(2, 3, 4, 20, 64, torch.float32, 0)
    plan = plan_sparse_attention(positions, 20)
    with pytest.raises(ValueError):
        sparse_query_attention(q[:5], k, v, plan, 0.1, impl="triton")
    with pytest.raises(ValueError):
        sparse_query_attention(q, k[:, :10], v[:, :10], plan, 0.1, impl="triton")


CPU_GRID = [  # n_kv, g, m, n, d, block_q: single rows, a block past the tiles, GQA 1/3/8, a tail
    (1, 1, 1, 1, 64, 32),
    (2, 1, 5, 37, 64, 32),
    (1, 3, 1, 23, 128, 32),
    (3, 3, 13, 40, 64, 4),
    (1, 8, 9, 50, 128, 32),
    (3, 3, 70, 400, 64, 32),
    (2, 3, 120, 700, 64, 16),
    (3, 3, 200, 260, 64, 64),  # a contiguous-ish tail: most rows cross the tiles' mask
]


@pytest.mark.parametrize("n_kv,g,m,n,d,block_q", CPU_GRID)
def test_cpu_kernel_matches_ref(n_kv, g, m, n, d, block_q):
    if not cpu_kernel_applies(*_case(1, 1, 1, 1, d, torch.float32, 0)[:3]):
        pytest.fail(f"the C++ kernel did not build here: {build_error('sparse_attention_cpu')}")
    q, k, v, positions = _case(n_kv, g, m, n, d, torch.float32, n_kv * g * m + n + d + block_q)
    plan = plan_sparse_attention(positions, n)
    got = sparse_query_attention_cpu(q, k, v, plan, d ** -0.5, block_q=block_q)
    torch.testing.assert_close(got.double(), _dense(q, k, v, positions, d ** -0.5), atol=2e-5, rtol=2e-5)


def test_cpu_kernel_strided_views_and_large_logits():
    """A [m, n_heads, d] query view, K/V slices of a larger cache slot, and scores far from 0 (exp2 range)."""
    q, k, v, _ = _case(3, 3, 40, 300, 64, torch.float32, 9)
    positions = torch.sort(torch.randperm(300, generator=torch.Generator().manual_seed(1))[:40]).values
    plan = plan_sparse_attention(positions, 300)
    q_t = (q * 8).transpose(0, 1).contiguous().transpose(0, 1)  # [n_heads, m, d] view of [m, n_heads, d]
    slot = torch.randn(2, 3, 400, 64)
    slot[0, :, :303], slot[1, :, :303] = k, v
    got = sparse_query_attention_cpu(q_t, slot[0, :, :350], slot[1, :, :350], plan, 0.125)
    torch.testing.assert_close(got.double(), _dense(q * 8, k, v, positions, 0.125), atol=2e-5, rtol=2e-5)


def test_impl_selects_the_implementation(monkeypatch):
    """impl=cpp runs the C++ kernel, impl=torch the reference; a causal square and APE plans take the reference."""
    calls = []
    real = sparse_attention.sparse_query_attention_cpu
    monkeypatch.setattr(sparse_attention, "sparse_query_attention_cpu",
                        lambda *a, march: calls.append(march) or real(*a, march=march))
    q, k, v, positions = _case(3, 3, 70, 90, 64, torch.float32, 3)
    plan = plan_sparse_attention(positions, 90)
    cpp = sparse_query_attention(q, k, v, plan, 0.125, impl="cpp")
    assert calls == ["native"]
    calls.clear()
    for march in runnable_isas()[-1:]:  # the build the dispatch may choose instead of native
        torch.testing.assert_close(sparse_query_attention(q, k, v, plan, 0.125, impl="cpp", march=march), cpp,
                                   atol=2e-5, rtol=2e-5)
        assert calls == [march]
        calls.clear()
    ref = sparse_query_attention(q, k, v, plan, 0.125, impl="torch")
    torch.testing.assert_close(cpp, ref, atol=2e-5, rtol=2e-5)
    assert sparse_query_attention(q, k, v, plan, 0.125) is not None  # None: torch on the CPU
    square = plan_sparse_attention(torch.arange(90), 90)  # every position a query: SDPA's causal kernel
    sparse_query_attention(torch.randn(9, 90, 64), k, v, square, 0.125, impl="cpp")
    assert calls == []
    with pytest.raises(ValueError, match="impl"):
        sparse_query_attention(q, k, v, plan, 0.125, impl="fast")


def test_cpu_kernel_checks_positions_before_the_call():
    """The C++ kernel trusts its positions: a hand-built plan with unsorted or out-of-range ones is refused."""
    q, k, v, positions = _case(3, 3, 70, 90, 64, torch.float32, 3)
    plan = plan_sparse_attention(positions, 90)
    shuffled = dataclasses.replace(plan, q_positions=plan.q_positions.flip(0))
    with pytest.raises(ValueError, match="increasing|span"):
        sparse_query_attention_cpu(q, k, v, shuffled, 0.125)
    beyond = dataclasses.replace(plan, q_positions=plan.q_positions + 200, q_end=plan.q_end + 200, kv_len=300)
    with pytest.raises(ValueError):
        sparse_query_attention_cpu(q, k, v, beyond, 0.125)


def test_cpu_kernel_rejects_what_it_does_not_take():
    q, k, v, positions = _case(1, 3, 4, 20, 96, torch.float32, 0)
    with pytest.raises(ValueError, match="head_dim"):
        sparse_query_attention_cpu(q, k, v, plan_sparse_attention(positions, 20), 0.1)


def test_cpu_kernel_build_failure_falls_back_to_the_reference(tmp_path):
    """A compiler that fails: no kernel, the reason logged and kept, attention still exact (torch reference)."""
    code = """
import logging, torch
logging.basicConfig()
from chunkcache.kernels._cpp import build_error
from chunkcache.kernels.sparse_attention import cpu_kernel_applies, plan_sparse_attention, sparse_query_attention
from chunkcache.kernels.sparse_attention import sparse_query_attention_ref
q, k, v = torch.randn(9, 70, 64), torch.randn(3, 90, 64), torch.randn(3, 90, 64)
plan = plan_sparse_attention(torch.arange(20, 90), 90)
assert not cpu_kernel_applies(q, k, v)
assert "could not build" in build_error("sparse_attention_cpu"), build_error("sparse_attention_cpu")
out, ref = sparse_query_attention(q, k, v, plan, 0.125), sparse_query_attention_ref(q, k, v, plan, 0.125)
torch.testing.assert_close(out, ref)
"""
    env = {**os.environ, "CXX": "false", "CHUNKCACHE_KERNEL_CACHE": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "unavailable, using the torch reference" in res.stderr
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".so"] == []  # no half-written object left behind


def test_the_runner_builds_the_cpu_kernel_at_start_up(tmp_path):
    """A fp32 CPU runner under auto builds the kernel and measures the dispatch in its constructor (a fresh cache
    gets the .so and the decision there), so no request pays for the compiler; kernels=torch builds nothing."""
    code = """
import os, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from chunkcache.runner.runner import ModelRunner
cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=2048)
model = LlamaForCausalLM(cfg).eval()
ModelRunner(model, kernels="torch")
assert os.listdir(sys.argv[1]) == [] if os.path.isdir(sys.argv[1]) else True
runner = ModelRunner(model)
files = os.listdir(sys.argv[1])
assert [f for f in files if f.endswith(".so")] and [f for f in files if f.startswith("dispatch-")], files
assert runner.attention.source == "measured", runner.attention.summary()
"""
    cache = tmp_path / "kernels"
    env = {**os.environ, "CHUNKCACHE_KERNEL_CACHE": str(cache)}
    res = subprocess.run([sys.executable, "-c", code, str(cache)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


ISA_GRID = [(3, 3, 70, 400, 64, 32), (1, 8, 9, 50, 128, 32), (3, 3, 200, 260, 64, 64), (2, 3, 120, 700, 64, 16)]


@pytest.mark.parametrize("march", sorted(_cpp.ISA_LEVELS))
def test_every_isa_build(march, tmp_path, monkeypatch):
    """Each portable build (x86-64-v2 SSE4.2 / v3 AVX2 / v4 AVX-512, armv8-a NEON) compiles on this machine's
    compiler where it targets this architecture; the ones this CPU runs match the float64 attention."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    if march.startswith("x86") != x86:
        pytest.skip(f"{march} needs a cross compiler (tests/kernels/test_cross_compile.py)")
    if march not in _cpp.runnable_isas():  # compile only: this CPU cannot execute it
        so = tmp_path / "k.so"
        _cpp._compile(_cpp.compiler(), _cpp.CSRC / "sparse_attention_cpu.cpp", so, march, _cpp.openmp_runtime())
        assert so.stat().st_size > 1000
        return
    monkeypatch.setenv("CHUNKCACHE_KERNEL_CACHE", str(tmp_path))
    width = sparse_attention.cpu_vector_width(march)
    assert width == {"x86-64-v2": 4, "x86-64-v3": 8, "x86-64-v4": 16, "armv8-a": 4}[march]
    for n_kv, g, m, n, d, block_q in ISA_GRID:
        q, k, v, positions = _case(n_kv, g, m, n, d, torch.float32, m + n)
        plan = plan_sparse_attention(positions, n)
        got = sparse_query_attention_cpu(q, k, v, plan, d ** -0.5, block_q=block_q, march=march)
        torch.testing.assert_close(got.double(), _dense(q, k, v, positions, d ** -0.5), atol=2e-5, rtol=2e-5)
