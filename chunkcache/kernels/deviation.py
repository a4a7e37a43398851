"""Per-token KV deviation (how far fresh K/V of a layer moved from the cached ones) and top-k selection.

Deviation of token t = sum over KV heads and head_dim of (fresh - cached)^2, in fp32, over K, over V,
or over both summed (K+V) depending on which pairs are given. CacheBlend's LMCache port uses K,
the original repo V. The Triton kernel reads K and V in one pass (one launch for both); the top-k
itself is torch.topk on the [T] deviations: a fused block-wise top-k would save one [T] fp32
round trip (a few KB) and is not worth its complexity.
"""

from __future__ import annotations

from typing import Any

import torch

from chunkcache.kernels._triton import cdiv, lazy_jit, next_pow2, want_triton

tl: Any = None  # triton.language, bound by lazy_jit before the first compile


def token_deviation_ref(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per token, summed over heads and head_dim.

    fresh, cached: [n_kv_heads, T, head_dim]. Returns [T] fp32.
    """
    _check_pair(fresh, cached)
    diff = fresh.to(torch.float32) - cached.to(torch.float32)
    return diff.square().sum(dim=(0, 2))


def select_topk_deviation_ref(fresh_k: torch.Tensor | None, cached_k: torch.Tensor | None,
                              fresh_v: torch.Tensor | None, cached_v: torch.Tensor | None, k: int) -> torch.Tensor:
    """Indices of the k tokens of largest deviation, sorted ascending. LongTensor [k].

    Each tensor: [n_kv_heads, T, head_dim]; pass None for a pair to leave it out (K only, V only,
    or K+V summed). 0 <= k <= T. Ties are broken as torch.topk breaks them.
    """
    pairs = _pairs(fresh_k, cached_k, fresh_v, cached_v)
    dev = token_deviation_ref(*pairs[0])
    if len(pairs) == 2:
        dev += token_deviation_ref(*pairs[1])
    return _topk_sorted(dev, k)


def _check_pair(fresh: torch.Tensor, cached: torch.Tensor) -> None:
    if fresh.shape != cached.shape or fresh.dim() != 3:
        raise ValueError(f"fresh {tuple(fresh.shape)} and cached {tuple(cached.shape)} must both be [n_kv, T, d]")


def _pairs(fresh_k, cached_k, fresh_v, cached_v) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (fresh, cached) pairs given, checked: K and/or V, each [n_kv, T, d], same T."""
    pairs = [(f, c) for f, c in ((fresh_k, cached_k), (fresh_v, cached_v)) if f is not None or c is not None]
    if not pairs or any(f is None or c is None for f, c in pairs):
        raise ValueError("give fresh and cached together, for K and/or V")
    for f, c in pairs:
        _check_pair(f, c)
    if len(pairs) == 2 and pairs[0][0].shape[1] != pairs[1][0].shape[1]:
        raise ValueError(f"K {tuple(pairs[0][0].shape)} and V {tuple(pairs[1][0].shape)} cover different T")
    return pairs


def _topk_sorted(dev: torch.Tensor, k: int) -> torch.Tensor:
    if not 0 <= k <= dev.numel():
        raise ValueError(f"k={k} must lie in [0, T={dev.numel()}]")
    return torch.topk(dev, k, sorted=False).indices.sort().values


@lazy_jit
def _deviation_kernel(fk_ptr, ck_ptr, fv_ptr, cv_ptr, out_ptr, H, T, D,
                      s_fkh, s_fkt, s_fkd, s_ckh, s_ckt, s_ckd,
                      s_fvh, s_fvt, s_fvd, s_cvh, s_cvt, s_cvd,
                      HAS_V: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program t-block: out[t] = sum_h,d (fk - ck)^2 (+ (fv - cv)^2 when HAS_V), fp32."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    t64 = t.to(tl.int64)[:, None]
    acc = tl.zeros([BLOCK_T], dtype=tl.float32)
    for h in range(H):
        h64 = tl.zeros([1, 1], tl.int64) + h  # int64 offsets (h is a python int under the interpreter)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d64 = d.to(tl.int64)[None, :]
            m = t_ok[:, None] & (d64 < D)
            f = tl.load(fk_ptr + h64 * s_fkh + t64 * s_fkt + d64 * s_fkd, mask=m, other=0.0).to(tl.float32)
            c = tl.load(ck_ptr + h64 * s_ckh + t64 * s_ckt + d64 * s_ckd, mask=m, other=0.0).to(tl.float32)
            acc += tl.sum((f - c) * (f - c), axis=1)
            if HAS_V:
                f = tl.load(fv_ptr + h64 * s_fvh + t64 * s_fvt + d64 * s_fvd, mask=m, other=0.0).to(tl.float32)
                c = tl.load(cv_ptr + h64 * s_cvh + t64 * s_cvt + d64 * s_cvd, mask=m, other=0.0).to(tl.float32)
                acc += tl.sum((f - c) * (f - c), axis=1)
    tl.store(out_ptr + t, acc, mask=t_ok)


def _deviation_triton(fk: torch.Tensor, ck: torch.Tensor,
                      fv: torch.Tensor | None = None, cv: torch.Tensor | None = None) -> torch.Tensor:
    """[T] fp32 deviation over (fk, ck) plus (fv, cv) when given; any strides, one launch."""
    _check_pair(fk, ck)
    has_v = fv is not None
    if has_v:
        _check_pair(fv, cv)
    h, t, d = fk.shape
    out = torch.empty(t, dtype=torch.float32, device=fk.device)
    if t == 0:
        return out
    if h == 0 or d == 0:
        return out.zero_()
    vf, vc = (fv, cv) if has_v else (fk, ck)
    block_t, block_d = min(64, next_pow2(t)), min(128, next_pow2(d))
    _deviation_kernel[(cdiv(t, block_t),)](fk, ck, vf, vc, out, h, t, d,
                                           *fk.stride(), *ck.stride(), *vf.stride(), *vc.stride(),
                                           HAS_V=has_v, BLOCK_T=block_t, BLOCK_D=block_d)
    return out


def token_deviation_triton(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Triton version of `token_deviation_ref` (same signature and result up to summation order)."""
    return _deviation_triton(fresh, cached)


def select_topk_deviation_triton(fresh_k: torch.Tensor | None, cached_k: torch.Tensor | None,
                                 fresh_v: torch.Tensor | None, cached_v: torch.Tensor | None, k: int) -> torch.Tensor:
    """Triton version of `select_topk_deviation_ref`: one deviation launch over K and V, then torch.topk."""
    pairs = _pairs(fresh_k, cached_k, fresh_v, cached_v)
    return _topk_sorted(_deviation_triton(*pairs[0], *(pairs[1] if len(pairs) == 2 else ())), k)


def token_deviation(fresh: torch.Tensor, cached: torch.Tensor, *, use_triton: bool | None = None) -> torch.Tensor:
    """Dispatch: Triton kernel on CUDA when triton imports (or when use_triton=True), else the torch reference."""
    if want_triton(use_triton, fresh, cached):
        return token_deviation_triton(fresh, cached)
    return token_deviation_ref(fresh, cached)


def select_topk_deviation(fresh_k: torch.Tensor | None, cached_k: torch.Tensor | None,
                          fresh_v: torch.Tensor | None, cached_v: torch.Tensor | None, k: int, *,
                          use_triton: bool | None = None) -> torch.Tensor:
    """Dispatch of `select_topk_deviation_ref` (see there for shapes and the K/V rule)."""
    given = [x for x in (fresh_k, cached_k, fresh_v, cached_v) if x is not None]
    if want_triton(use_triton, *given):
        return select_topk_deviation_triton(fresh_k, cached_k, fresh_v, cached_v, k)
    return select_topk_deviation_ref(fresh_k, cached_k, fresh_v, cached_v, k)
