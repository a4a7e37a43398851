"""The merged KV cache of one request. `KVCache.write` is the only function that writes into it."""

from __future__ import annotations

import torch

from chunkcache.kernels.rope_shift import rope_shift


class KVCache:
    """Per-request KV buffer laid out by position: index j holds the token at position j.

    keys, values: [n_layers, n_kv_heads, capacity, head_dim]. Positions 0..length-1 are valid.
    The model forward never owns this storage; it calls `write` and reads `layer(l)`.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int, inv_freq: torch.Tensor,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 use_triton: bool | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"KVCache capacity must be positive, got {capacity}")
        shape = (n_layers, n_kv_heads, capacity, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.inv_freq = inv_freq
        self.use_triton = use_triton  # RoPE-shift kernel choice (None: auto)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def num_layers(self) -> int:
        return self.keys.shape[0]

    def reserve(self, capacity: int) -> None:
        """Grow the buffer to hold at least `capacity` positions (copies the valid part)."""
        if capacity <= self.capacity:
            return
        capacity = max(capacity, self.capacity + 256)  # amortise token-by-token growth during decode
        n_layers, n_kv, _, d = self.keys.shape
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = torch.empty((n_layers, n_kv, capacity, d), dtype=old.dtype, device=old.device)
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def write(self, layers: int | slice, index: slice | torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rope_delta: int | torch.Tensor = 0, end: int | None = None) -> None:
        """Write K/V for `layers` at positions `index`.

        layers=int: k, v [n_kv, m, d]; layers=slice: k, v [n_layers_in_slice, n_kv, m, d].
        index: a contiguous slice of positions, or an int64 tensor [m] of positions.
        rope_delta: rotate keys by this many positions on the way in (placing a cached chunk); an int64 tensor
            [m]: each token by its own delta (chunks laid side by side, written at once).
        end: for a tensor index, max(index) + 1 when the caller knows it (skips a device->host sync).
        """
        if isinstance(index, slice):
            start, stop = index.start or 0, index.stop
            end = stop
        else:
            end = end if end is not None else (int(index.max()) + 1 if index.numel() else 0)
        rotate = isinstance(rope_delta, torch.Tensor) or rope_delta != 0
        if end > self.capacity:
            raise ValueError(f"write up to position {end} exceeds KVCache capacity {self.capacity}")
        dst_k = self.keys[layers]  # [(L,) n_kv, cap, d] view
        dst_v = self.values[layers]
        if isinstance(index, slice):
            dst_k, dst_v = dst_k[..., start:stop, :], dst_v[..., start:stop, :]
            if dst_k.shape != k.shape or dst_v.shape != v.shape:
                raise ValueError(f"KVCache.write: k {tuple(k.shape)} v {tuple(v.shape)} "
                                 f"do not fit {tuple(dst_k.shape)}")
            if rotate:
                deltas = rope_delta if isinstance(rope_delta, torch.Tensor) else \
                    torch.full((1,), rope_delta, dtype=torch.int64, device=k.device)  # [m], or [1]: every token
                rope_shift(k, deltas, self.inv_freq, out=dst_k, use_triton=self.use_triton)
            else:
                dst_k.copy_(k)
            dst_v.copy_(v)
        else:
            if rotate:
                raise ValueError("rope_delta is only supported for contiguous writes")
            dst_k.index_copy_(-2, index, k.to(dst_k.dtype))
            dst_v.index_copy_(-2, index, v.to(dst_v.dtype))
        self.length = max(self.length, end)

    def truncate(self, length: int) -> None:
        """Forget positions >= length (their slots are overwritten by later writes)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate length {length} must be in [0, {self.length}]")
        self.length = length

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid K, V of one layer: [n_kv, length, d] views."""
        return self.keys[layer_idx, :, : self.length], self.values[layer_idx, :, : self.length]

    def to_dynamic_cache(self, length: int | None = None):
        """A transformers DynamicCache holding positions 0..length-1 (copies), for `model.generate`."""
        from transformers import DynamicCache

        n = self.length if length is None else length
        if not 0 < n <= self.length:
            raise ValueError(f"length {n} must be in (0, {self.length}]")
        data = [(self.keys[i, None, :, :n].clone(), self.values[i, None, :, :n].clone())  # [1, n_kv, n, d]
                for i in range(self.num_layers)]
        return DynamicCache(ddp_cache_data=data)
