"""Move cached keys to new positions: one more RoPE rotation by each token's position delta.

With rotary embeddings a key stored at position i is R(i)k; R(d)R(i)k = R(i+d)k, so re-positioning
is exact up to float rounding. Uses the half-split (rotate_half) layout of HF llama/qwen2/mistral.

One launch rotates every leading slice (all layers and KV heads of a [L, n_kv, T, d] tensor) and
every chunk laid side by side along T (each token carries its own delta); cos/sin are computed
in-kernel and the result is written straight into `out` (e.g. a slice of the merged cache).
"""

from __future__ import annotations

from typing import Any

import torch

from chunkcache.kernels._triton import cdiv, lazy_jit, next_pow2, want_triton

tl: Any = None  # triton.language, bound by lazy_jit before the first compile


def _check(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor, out: torch.Tensor | None) -> None:
    if keys.dim() < 2:
        raise ValueError(f"keys must be [..., T, head_dim], got {tuple(keys.shape)}")
    t, d = keys.shape[-2], keys.shape[-1]
    if d % 2 or inv_freq.shape != (d // 2,):
        raise ValueError(f"inv_freq must be [head_dim/2={d // 2}], got {tuple(inv_freq.shape)}")
    if deltas.shape not in ((t,), (1,)):
        raise ValueError(f"deltas must be [T={t}] or [1] (one delta for every token), got {tuple(deltas.shape)}")
    if out is not None and out.shape != keys.shape:
        raise ValueError(f"out {tuple(out.shape)} must match keys {tuple(keys.shape)}")


def rope_shift_ref(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate keys [..., T, head_dim] by deltas [T] (int64 positions; [1]: the same delta for every token, one
    cos/sin row) and write to out (may alias keys).

    inv_freq: [head_dim/2] fp32 rotary frequencies of the model (rope scaling already folded in).
    Returns out (a new tensor when out is None). Math in fp32, stored in keys.dtype.
    """
    _check(keys, deltas, inv_freq, out)
    angle = deltas.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]  # [T or 1, d/2]
    cos, sin = angle.cos(), angle.sin()
    k = keys.to(torch.float32)
    k1, k2 = k.chunk(2, dim=-1)  # [..., T, d/2] each
    if out is not None and out.dtype == torch.float32 and out.device == keys.device and not keys.requires_grad \
            and out.untyped_storage().data_ptr() != keys.untyped_storage().data_ptr():
        o1, o2 = out.chunk(2, dim=-1)  # fp32 into a separate buffer: straight into out, no temporaries
        torch.mul(k1, cos, out=o1).addcmul_(k2, sin, value=-1)
        torch.mul(k2, cos, out=o2).addcmul_(k1, sin)
        return out
    rotated = torch.cat((k1 * cos - k2 * sin, k2 * cos + k1 * sin), dim=-1)
    if out is None:
        return rotated.to(keys.dtype)
    out.copy_(rotated)
    return out


@lazy_jit
def _rope_shift_kernel(k_ptr, o_ptr, delta_ptr, freq_ptr, B, T, HALF,
                       s_kb, s_kt, s_kd, s_ob, s_ot, s_od,
                       BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, ROWS: tl.constexpr):
    """Program (t-block, row-group): cos/sin for BLOCK_T tokens once, then ROWS leading slices."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_H)
    t_ok = t < T
    delta = tl.load(delta_ptr + t, mask=t_ok, other=0).to(tl.float32)
    freq = tl.load(freq_ptr + j, mask=j < HALF, other=0.0).to(tl.float32)
    angle = delta[:, None] * freq[None, :]  # [BLOCK_T, BLOCK_H]
    # Cody-Waite reduction to [-pi, pi] (2*pi = 6.28125 + 0.0019353...), accurate for large angles.
    turns = tl.floor(angle * 0.15915494309189535 + 0.5)
    r = (angle - turns * 6.28125) - turns * 0.0019353071795864769
    cos = tl.cos(r)
    sin = tl.sin(r)
    mask = t_ok[:, None] & (j[None, :] < HALF)
    t64 = t.to(tl.int64)[:, None]
    j64 = j.to(tl.int64)[None, :]
    for i in range(ROWS):
        b = (tl.program_id(1) * ROWS + i).to(tl.int64)
        m = mask & ((t64 * 0 + b) < B)  # [BLOCK_T, 1] row guard, broadcast
        src = k_ptr + b * s_kb + t64 * s_kt + j64 * s_kd
        dst = o_ptr + b * s_ob + t64 * s_ot + j64 * s_od
        k1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
        k2 = tl.load(src + HALF * s_kd, mask=m, other=0.0).to(tl.float32)
        tl.store(dst, (k1 * cos - k2 * sin).to(o_ptr.dtype.element_ty), mask=m)
        tl.store(dst + HALF * s_od, (k2 * cos + k1 * sin).to(o_ptr.dtype.element_ty), mask=m)


def _as_rows(x: torch.Tensor) -> torch.Tensor | None:
    """View [..., T, d] as [B, T, d] without copying, or None when the strides do not allow it."""
    try:
        return x.view(-1, x.shape[-2], x.shape[-1])  # [B, T, d]
    except RuntimeError:
        return None


def rope_shift_triton(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton version of `rope_shift_ref` (same signature and result); any strides.

    out may be keys itself (in place) or a separate buffer, but must not partially overlap keys.
    """
    _check(keys, deltas, inv_freq, out)
    if out is None:
        out = torch.empty_like(keys)
    t, d = keys.shape[-2], keys.shape[-1]
    if keys.numel() == 0:
        return out
    src = _as_rows(keys)
    if src is None:
        src = keys.reshape(-1, t, d)  # [B, T, d] copy
    dst = _as_rows(out)
    target = dst if dst is not None else torch.empty(src.shape, dtype=out.dtype, device=out.device)  # [B, T, d]
    deltas = deltas.to(device=keys.device, dtype=torch.int64).expand(t).contiguous()  # [T]
    inv_freq = inv_freq.to(device=keys.device, dtype=torch.float32).contiguous()
    b = src.shape[0]
    block_t, rows = min(32, next_pow2(t)), 4
    grid = (cdiv(t, block_t), cdiv(b, rows))
    _rope_shift_kernel[grid](src, target, deltas, inv_freq, b, t, d // 2,
                             *src.stride(), *target.stride(),
                             BLOCK_T=block_t, BLOCK_H=next_pow2(d // 2), ROWS=rows)
    if dst is None:
        out.copy_(target.view(out.shape))  # [B, T, d] -> [..., T, d]
    return out


def rope_shift(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor,
               out: torch.Tensor | None = None, *, use_triton: bool | None = None) -> torch.Tensor:
    """Dispatch: Triton kernel on CUDA when triton imports (or when use_triton=True), else the torch reference."""
    if want_triton(use_triton, keys):
        return rope_shift_triton(keys, deltas, inv_freq, out)
    return rope_shift_ref(keys, deltas, inv_freq, out)
