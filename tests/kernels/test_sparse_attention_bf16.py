"""The C++ kernel's bf16 variant against its torch reference (fp32 attention over bf16-rounded operands)."""

import pytest
import torch

from chunkcache.kernels._cpp import build_error, runnable_isas
from chunkcache.kernels.sparse_attention import plan_sparse_attention, sparse_query_attention_ref
from chunkcache.kernels.sparse_attention_bf16 import (bf16_kernel_available, pack_kv_bf16,
                                                      sparse_query_attention_bf16_cpu, sparse_query_attention_bf16_ref)

WHY = build_error("sparse_attention_cpu") or "the CPU or the compiler lacks AVX512-BF16"
needs_bf16 = pytest.mark.skipif(not bf16_kernel_available(), reason=f"no AVX512-BF16 build here ({WHY})")

GRID = [  # n_kv, g, m, n, d, block_q
    (1, 3, 1, 23, 128, 32),
    (3, 3, 13, 40, 64, 4),
    (1, 8, 9, 50, 128, 32),
    (3, 3, 70, 400, 64, 32),
    (2, 3, 120, 701, 64, 16),  # an odd key count: the last key pair has a zero key
    (3, 3, 200, 260, 64, 64),  # a contiguous-ish tail: most rows cross the tiles' mask
    (3, 3, 330, 2100, 64, 32),  # scattered over many whole tiles
]


def _case(n_kv, g, m, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    positions = torch.sort(torch.randperm(n, generator=gen)[:m]).values
    q = torch.randn(n_kv * g, m, d, generator=gen)
    k, v = (torch.randn(n_kv, n + 3, d, generator=gen) for _ in range(2))
    return q, k, v, plan_sparse_attention(positions, n)


@needs_bf16
@pytest.mark.parametrize("n_kv,g,m,n,d,block_q", GRID)
def test_bf16_kernel_matches_its_reference(n_kv, g, m, n, d, block_q):
    q, k, v, plan = _case(n_kv, g, m, n, d, n_kv * g * m + n + d + block_q)
    got = sparse_query_attention_bf16_cpu(q, k, v, plan, d ** -0.5, block_q=block_q)
    ref = sparse_query_attention_bf16_ref(q, k, v, plan, d ** -0.5)
    torch.testing.assert_close(got, ref, atol=1e-2, rtol=1e-2)  # the probabilities' bf16 rounding
    fp32 = sparse_query_attention_ref(q, k, v, plan, d ** -0.5)
    err, ref_err = ((got - fp32).norm() / fp32.norm()).item(), ((ref - fp32).norm() / fp32.norm()).item()
    assert 0 < err < 1.5 * ref_err + 1e-3  # bf16's rounding, not more: a mispaired product is off by O(1)


@needs_bf16
def test_one_visible_key_returns_its_value_rounded_to_bf16():
    """A query at position 0 sees key 0 only: probability exactly 1, output exactly bf16(v[0]) (products exact)."""
    q, k, v, _ = _case(3, 3, 1, 300, 64, 5)
    plan = plan_sparse_attention(torch.tensor([0]), 300)
    got = sparse_query_attention_bf16_cpu(q, k, v, plan, 0.125)
    want = v[:, :1].to(torch.bfloat16).float().repeat_interleave(3, dim=0)  # [n_heads, 1, d]
    assert torch.equal(got, want)


@needs_bf16
def test_bf16_kernel_takes_strided_views_and_large_logits():
    q, k, v, plan = _case(3, 3, 40, 300, 64, 9)
    q_t = (q * 8).transpose(0, 1).contiguous().transpose(0, 1)  # [n_heads, m, d] view of [m, n_heads, d]
    slot = torch.randn(2, 3, 400, 64)
    slot[0, :, :303], slot[1, :, :303] = k, v
    got = sparse_query_attention_bf16_cpu(q_t, slot[0, :, :350], slot[1, :, :350], plan, 0.125)
    torch.testing.assert_close(got, sparse_query_attention_bf16_ref(q * 8, k, v, plan, 0.125), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("kv_len", [1, 37, 128, 6001])
def test_pack_kv_bf16_layouts(kv_len):
    k, v = torch.randn(3, kv_len + 5, 64), torch.randn(3, kv_len + 5, 64)
    kp, vp, kv_pad = pack_kv_bf16(k, v, kv_len)
    assert kv_pad % 128 == 0 and kv_len <= kv_pad < kv_len + 128
    for n, j, dim in ((0, 0, 0), (kv_len - 1, 1, 63), (kv_len // 2, 0, 17)):  # kp[h, dim / 2, key, dim % 2]
        assert kp[j, dim // 2, n, dim % 2] == k[j, n, dim].to(torch.bfloat16)
        assert vp[j, n // 2, dim, n % 2] == v[j, n, dim].to(torch.bfloat16)  # vp[h, key / 2, dim, key % 2]
    dense = torch.zeros(3, kv_pad, 64, dtype=torch.bfloat16)
    dense[:, :kv_len] = k[:, :kv_len]
    assert torch.equal(kp.transpose(1, 2).reshape(3, kv_pad, 64), dense)
    dense[:, :kv_len] = v[:, :kv_len]
    assert torch.equal(vp.transpose(2, 3).reshape(3, kv_pad, 64), dense)


def test_a_build_without_avx512_bf16_has_no_bf16_variant():
    portable = [m for m in runnable_isas() if m in ("x86-64-v2", "x86-64-v3", "x86-64-v4")]
    if not portable:
        pytest.skip("not an x86-64 CPU")
    assert not bf16_kernel_available(portable[-1])  # the psABI levels do not include AVX512-BF16
    q, k, v, plan = _case(1, 3, 5, 40, 64, 2)
    with pytest.raises(ValueError, match="AVX512-BF16"):
        sparse_query_attention_bf16_cpu(q, k, v, plan, 0.125, march=portable[-1])
