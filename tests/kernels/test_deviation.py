"""KV deviation and top-k selection: references vs naive loops; Triton kernel vs reference."""

import pytest
import torch

from chunkcache.kernels.deviation import (select_topk_deviation, select_topk_deviation_ref,
                                          token_deviation, token_deviation_ref)


def _naive_deviation(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(((fresh[:, t].double() - cached[:, t].double()) ** 2).sum())
                         for t in range(fresh.shape[1])], dtype=torch.float64)  # [T]


def _kv(n_kv: int, t: int, d: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_kv, t, d, generator=g).to(dtype) for _ in range(4)]


def test_ref_matches_naive():
    fk, ck, fv, cv = _kv(3, 23, 64, torch.float32, 0)
    torch.testing.assert_close(token_deviation_ref(fk, ck).double(), _naive_deviation(fk, ck), rtol=1e-5, atol=0)
    both = _naive_deviation(fk, ck) + _naive_deviation(fv, cv)
    for k in (0, 1, 5, 23):
        want = torch.sort(torch.argsort(both, descending=True)[:k]).values
        assert torch.equal(select_topk_deviation_ref(fk, ck, fv, cv, k), want)
    want_v = torch.sort(torch.argsort(_naive_deviation(fv, cv), descending=True)[:4]).values
    assert torch.equal(select_topk_deviation_ref(None, None, fv, cv, 4), want_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_kv,t,d", [(1, 1, 64), (3, 65, 64), (8, 100, 128), (2, 17, 96)])
def test_token_deviation_triton(n_kv, t, d, dtype):
    fk, ck, _, _ = _kv(n_kv, t, d, dtype, t)
    got = token_deviation(fk, ck, use_triton=True)
    assert got.dtype == torch.float32 and got.shape == (t,)
    torch.testing.assert_close(got, token_deviation_ref(fk, ck), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["k", "v", "kv"])
@pytest.mark.parametrize("n_kv,t,d,k", [(1, 1, 64, 1), (3, 70, 64, 11), (8, 33, 128, 33), (3, 40, 128, 0)])
def test_select_topk_triton(which, n_kv, t, d, k):
    fk, ck, fv, cv = _kv(n_kv, t, d, torch.float32, t + k)
    args = (fk if "k" in which else None, ck if "k" in which else None,
            fv if "v" in which else None, cv if "v" in which else None)
    got = select_topk_deviation(*args, k, use_triton=True)
    want = select_topk_deviation_ref(*args, k)
    assert got.dtype == torch.int64 and torch.equal(got, want)


def test_strided_inputs():
    fk, ck, fv, cv = _kv(3, 29, 64, torch.float16, 7)
    fk_t = fk.transpose(0, 1).contiguous().transpose(0, 1)  # [n_kv, T, d] view of a [T, n_kv, d] buffer
    got = select_topk_deviation(fk_t, ck, fv, cv, 6, use_triton=True)
    assert torch.equal(got, select_topk_deviation_ref(fk, ck, fv, cv, 6))


def test_errors():
    fk, ck, fv, cv = _kv(2, 9, 64, torch.float32, 1)
    with pytest.raises(ValueError):
        select_topk_deviation(fk, ck, fv, cv, 10, use_triton=True)
    with pytest.raises(ValueError):
        select_topk_deviation(fk, None, None, None, 2)
    with pytest.raises(ValueError):
        token_deviation(fk, ck[:, :5], use_triton=True)
