"""KV codecs for the slow tiers (disk, remote).

A codec turns one K or V tensor [n_layers, n_kv_heads, L, head_dim] into named parts whose first
dimension is still the layer, so a single layer can be read and decoded alone (pipelined loading).

- "none": the tensor itself, bit exact.
- "int8": symmetric per-channel int8 (KIVI-style channel = one (head, head_dim) column, the scale
  taken over the tokens): q = round(x / s), s = max_t |x| / 127, stored as int8 q plus float32
  scales [n_layers, n_kv_heads, 1, head_dim]. Error bound per element: |x - q*s| <= s/2 (plus
  rounding to the output dtype). Size: 1 byte per element + 4/L per element for scales, i.e.
  about 4x smaller than float32 and 2x smaller than bf16/fp16 for chunks of hundreds of tokens.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Codec(Protocol):
    name: str

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: [n_layers, n_kv_heads, L, head_dim] -> parts, each with dim 0 = n_layers, contiguous."""
        ...

    def decode(self, parts: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Inverse of encode on any slice along dim 0 (e.g. one layer, shape [1, ...] or [...])."""
        ...


class IdentityCodec:
    name = "none"

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"": x.contiguous()}

    def decode(self, parts: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        x = parts[""]
        if x.dtype != dtype:
            raise ValueError(f"stored dtype {x.dtype} differs from declared {dtype}")
        return x


class Int8ChannelCodec:
    name = "int8"

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not x.is_floating_point():
            raise ValueError(f"int8 codec needs a floating tensor, got {x.dtype}")
        xf = x.float()
        amax = xf.abs().amax(dim=-2, keepdim=True)  # [n_layers, n_kv, 1, d]
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(xf / scale).clamp_(-127, 127).to(torch.int8)
        return {"q": q.contiguous(), "scale": scale.contiguous()}

    def decode(self, parts: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        q, scale = parts["q"], parts["scale"]
        if q.dtype != torch.int8 or scale.dtype != torch.float32:
            raise ValueError(f"int8 codec parts have dtypes {q.dtype}, {scale.dtype}")
        return (q.float() * scale).to(dtype)


def make_codec(name: str) -> Codec:
    if name == "none":
        return IdentityCodec()
    if name == "int8":
        return Int8ChannelCodec()
    raise ValueError(f"unknown codec {name!r} (expected 'none' or 'int8')")


def max_abs_error_bound(x: torch.Tensor) -> torch.Tensor:
    """Per-element bound of the int8 codec's error for x [n_layers, n_kv, L, d]: s/2 per channel."""
    return x.float().abs().amax(dim=-2, keepdim=True) / 127.0 / 2.0
