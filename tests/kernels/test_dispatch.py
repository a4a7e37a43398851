"""Dispatch rule: torch reference on CPU by default, Triton only on CUDA or when forced; no triton needed."""

import subprocess
import sys

import pytest
import torch

from chunkcache.kernels.rope_shift import rope_shift, rope_shift_ref


def test_cpu_default_is_reference(monkeypatch):
    calls = []
    monkeypatch.setattr("chunkcache.kernels.rope_shift.rope_shift_triton", lambda *a: calls.append(a))
    keys, deltas, inv_freq = torch.randn(2, 5, 64), torch.arange(5), torch.ones(32)
    torch.testing.assert_close(rope_shift(keys, deltas, inv_freq), rope_shift_ref(keys, deltas, inv_freq))
    assert calls == []


def test_forcing_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        rope_shift(torch.randn(2, 5, 64), torch.arange(5), torch.ones(32), use_triton=True)


def test_cpu_path_without_triton():
    """With `import triton` blocked, importing and running every op's CPU path works; forcing Triton errors."""
    code = """
import sys
sys.modules["triton"] = None
import torch
from chunkcache.kernels.deviation import select_topk_deviation, token_deviation
from chunkcache.kernels.rope_shift import rope_shift
from chunkcache.kernels.scatter_kv import scatter_kv
from chunkcache.kernels.sparse_attention import plan_sparse_attention, sparse_query_attention
x = torch.randn(2, 6, 64)
rope_shift(x, torch.arange(6), torch.ones(32))
token_deviation(x, x + 1)
select_topk_deviation(x, x + 1, None, None, 2)
scatter_kv(x, x.clone(), x[:, :2], x[:, :2], torch.tensor([4, 1]))
sparse_query_attention(torch.randn(4, 2, 64), x, x, plan_sparse_attention(torch.tensor([2, 5]), 6), 0.1)
try:
    rope_shift(x, torch.arange(6), torch.ones(32), use_triton=True)
except RuntimeError as e:
    assert "not installed" in str(e)
else:
    raise AssertionError("forcing Triton without triton must fail")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_does_not_load_triton():
    code = ("import sys, chunkcache.kernels.rope_shift, chunkcache.kernels.deviation, "
            "chunkcache.kernels.sparse_attention, chunkcache.kernels.scatter_kv; "
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_env_does_not_override_an_explicit_choice(monkeypatch):
    """CHUNKCACHE_KERNELS is read once by the configuration, never at dispatch: use_triton=None stays auto."""
    calls = []
    monkeypatch.setattr("chunkcache.kernels.rope_shift.rope_shift_triton", lambda *a: calls.append(a) or a[0])
    keys, deltas, inv_freq = torch.randn(2, 5, 64), torch.arange(5), torch.ones(32)
    monkeypatch.setenv("CHUNKCACHE_KERNELS", "triton")
    torch.testing.assert_close(rope_shift(keys, deltas, inv_freq), rope_shift_ref(keys, deltas, inv_freq))
    assert calls == []
    rope_shift(keys, deltas, inv_freq, use_triton=True)
    assert len(calls) == 1
