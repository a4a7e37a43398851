"""Write the fresh K/V of the recomputed tokens into the merged cache, in place.

cache_k, cache_v: [n_kv_heads, N, head_dim] (the merged cache of one layer, by position);
k_new, v_new: [n_kv_heads, m, head_dim]; index: [m] int64 positions, unique, in [0, N).
Row j of the new K/V lands at position index[j]; values are cast to the cache dtype.

Not fused into the sparse-query attention kernel: the selected queries must see each other's
fresh keys, so the scatter has to finish before any attention program reads the cache, and a
grid-wide barrier inside one launch costs more than this second, bandwidth-bound launch.
"""

from __future__ import annotations

from typing import Any

import torch

from chunkcache.kernels._triton import cdiv, lazy_jit, next_pow2, want_triton

tl: Any = None  # triton.language, bound by lazy_jit before the first compile


def _check(cache_k: torch.Tensor, cache_v: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
           index: torch.Tensor) -> None:
    if cache_k.dim() != 3 or cache_k.shape != cache_v.shape:
        raise ValueError(f"cache_k {tuple(cache_k.shape)} and cache_v {tuple(cache_v.shape)} must both be [n_kv, N, d]")
    n_kv, _, d = cache_k.shape
    m = index.shape[0] if index.dim() == 1 else -1
    if index.dim() != 1 or k_new.shape != (n_kv, m, d) or v_new.shape != (n_kv, m, d):
        raise ValueError(f"k_new {tuple(k_new.shape)}, v_new {tuple(v_new.shape)} must be [n_kv={n_kv}, m, d={d}] "
                         f"for index [m], got index {tuple(index.shape)}")


def scatter_kv_ref(cache_k: torch.Tensor, cache_v: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                   index: torch.Tensor) -> None:
    """cache_k[:, index] = k_new and cache_v[:, index] = v_new, in place (see the module docstring)."""
    _check(cache_k, cache_v, k_new, v_new, index)
    index = index.to(device=cache_k.device, dtype=torch.int64)
    cache_k.index_copy_(1, index, k_new.to(cache_k.dtype))
    cache_v.index_copy_(1, index, v_new.to(cache_v.dtype))


@lazy_jit
def _scatter_kv_kernel(ck_ptr, cv_ptr, kn_ptr, vn_ptr, idx_ptr, M, N, D,
                       s_ckh, s_ckn, s_ckd, s_cvh, s_cvn, s_cvd,
                       s_knh, s_knm, s_knd, s_vnh, s_vnm, s_vnd,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (row block, KV head): copy BLOCK_M rows of K and V to their positions."""
    h = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = r < M
    dst = tl.load(idx_ptr + r, mask=r_ok, other=0)
    ok = r_ok & (dst >= 0) & (dst < N)  # out-of-range positions are dropped, never written
    r64 = r.to(tl.int64)[:, None]
    dst = dst.to(tl.int64)[:, None]
    for d0 in range(0, D, BLOCK_D):
        d = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)[None, :]
        m = ok[:, None] & (d < D)
        k = tl.load(kn_ptr + h * s_knh + r64 * s_knm + d * s_knd, mask=m)
        tl.store(ck_ptr + h * s_ckh + dst * s_ckn + d * s_ckd, k.to(ck_ptr.dtype.element_ty), mask=m)
        v = tl.load(vn_ptr + h * s_vnh + r64 * s_vnm + d * s_vnd, mask=m)
        tl.store(cv_ptr + h * s_cvh + dst * s_cvn + d * s_cvd, v.to(cv_ptr.dtype.element_ty), mask=m)


def scatter_kv_triton(cache_k: torch.Tensor, cache_v: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                      index: torch.Tensor) -> None:
    """Triton version of `scatter_kv_ref`; any strides. Out-of-range positions are skipped, not checked
    (checking would sync the GPU); the reference raises on them."""
    _check(cache_k, cache_v, k_new, v_new, index)
    n_kv, n, d = cache_k.shape
    m = index.shape[0]
    if m == 0 or n_kv == 0 or d == 0:
        return
    index = index.to(device=cache_k.device, dtype=torch.int64).contiguous()
    block_m, block_d = min(32, next_pow2(m)), min(128, next_pow2(d))
    _scatter_kv_kernel[(cdiv(m, block_m), n_kv)](cache_k, cache_v, k_new, v_new, index, m, n, d,
                                                  *cache_k.stride(), *cache_v.stride(),
                                                  *k_new.stride(), *v_new.stride(),
                                                  BLOCK_M=block_m, BLOCK_D=block_d)


def scatter_kv(cache_k: torch.Tensor, cache_v: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
               index: torch.Tensor, *, use_triton: bool | None = None) -> None:
    """Dispatch: Triton kernel on CUDA when triton imports (or when use_triton=True), else the torch reference."""
    if want_triton(use_triton, cache_k, cache_v, k_new, v_new):
        scatter_kv_triton(cache_k, cache_v, k_new, v_new, index)
    else:
        scatter_kv_ref(cache_k, cache_v, k_new, v_new, index)
