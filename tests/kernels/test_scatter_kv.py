"""Scatter of fresh K/V into the merged cache: reference vs a naive loop; Triton kernel vs reference."""

import pytest
import torch

from chunkcache.kernels.scatter_kv import scatter_kv, scatter_kv_ref


def _case(n_kv: int, n: int, m: int, d: int, dtype: torch.dtype, new_dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    cache_k = torch.randn(n_kv, n, d, generator=g).to(dtype)
    cache_v = torch.randn(n_kv, n, d, generator=g).to(dtype)
    k_new = torch.randn(n_kv, m, d, generator=g).to(new_dtype)
    v_new = torch.randn(n_kv, m, d, generator=g).to(new_dtype)
    index = torch.randperm(n, generator=g)[:m]
    return cache_k, cache_v, k_new, v_new, index


def test_ref_matches_naive():
    ck, cv, kn, vn, index = _case(3, 30, 7, 64, torch.float32, torch.float32, 0)
    want_k, want_v = ck.clone(), cv.clone()
    for j, pos in enumerate(index.tolist()):
        want_k[:, pos] = kn[:, j]
        want_v[:, pos] = vn[:, j]
    k_storage = ck.data_ptr()
    scatter_kv_ref(ck, cv, kn, vn, index)
    assert ck.data_ptr() == k_storage
    assert torch.equal(ck, want_k) and torch.equal(cv, want_v)


@pytest.mark.parametrize("dtype,new_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                             (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
@pytest.mark.parametrize("n_kv,n,m,d", [(1, 1, 1, 64), (3, 45, 1, 64), (8, 70, 37, 128), (2, 33, 33, 96)])
def test_triton_matches_ref(n_kv, n, m, d, dtype, new_dtype):
    ck, cv, kn, vn, index = _case(n_kv, n, m, d, dtype, new_dtype, n + m)
    want_k, want_v = ck.clone(), cv.clone()
    scatter_kv_ref(want_k, want_v, kn, vn, index)
    scatter_kv(ck, cv, kn, vn, index, use_triton=True)
    assert torch.equal(ck, want_k) and torch.equal(cv, want_v)


def test_triton_strided_cache_and_new():
    ck, cv, kn, vn, index = _case(3, 40, 9, 64, torch.float32, torch.float32, 3)
    slot = torch.zeros(40, 3, 64)  # cache stored [N, n_kv, d]; the op sees [n_kv, N, d]
    slot.copy_(ck.transpose(0, 1))
    kn_t = kn.transpose(0, 1).contiguous().transpose(0, 1)  # projection output [m, n_kv, d] seen as [n_kv, m, d]
    want_k, want_v = ck.clone(), cv.clone()
    scatter_kv_ref(want_k, want_v, kn, vn, index)
    scatter_kv(slot.transpose(0, 1), cv, kn_t, vn, index, use_triton=True)
    assert torch.equal(slot.transpose(0, 1), want_k) and torch.equal(cv, want_v)


def test_shape_errors():
    ck, cv, kn, vn, index = _case(2, 20, 5, 64, torch.float32, torch.float32, 0)
    with pytest.raises(ValueError):
        scatter_kv(ck, cv, kn[:, :4], vn, index, use_triton=True)
    with pytest.raises(ValueError):
        scatter_kv(ck, cv[:1], kn, vn, index, use_triton=True)
