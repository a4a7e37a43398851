"""The unit the store holds and the blender reads: one chunk's per-layer K and V."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkKV:
    """KV of one chunk's own tokens, computed behind a fixed precompute context.

    keys, values: [n_layers, n_kv_heads, L, head_dim]. Keys carry RoPE at positions
    base_position .. base_position + L - 1 (base_position = length of the precompute context),
    so placing the chunk at offset o is one more rotation by o - base_position.
    """

    key: str
    fingerprint: str
    token_ids: tuple[int, ...]
    base_position: int
    keys: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.keys.dim() != 4:
            raise ValueError(f"ChunkKV.keys must be [n_layers, n_kv_heads, L, head_dim], got {tuple(self.keys.shape)}")
        if self.keys.shape != self.values.shape:
            raise ValueError(f"ChunkKV keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)} differ")
        if self.keys.shape[2] != len(self.token_ids):
            raise ValueError(f"ChunkKV has {self.keys.shape[2]} KV rows for {len(self.token_ids)} tokens")
        if len(self.token_ids) == 0:
            raise ValueError("ChunkKV of an empty chunk")
        if self.base_position < 0:
            raise ValueError(f"ChunkKV.base_position must be >= 0, got {self.base_position}")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def to(self, device: torch.device | str) -> "ChunkKV":
        """Copy to another device (no-op when already there)."""
        if self.keys.device == torch.device(device):
            return self
        return ChunkKV(self.key, self.fingerprint, self.token_ids, self.base_position,
                       self.keys.to(device), self.values.to(device))
