"""GPU and CPU tiers: the chunk's tensors kept in device or host memory.

put() copies the caller's tensors into storage the tier owns (pinned host memory on the CPU tier
when CUDA is present, so host->GPU copies can be asynchronous); get() returns the stored ChunkKV
itself and the store copies it out, so a caller that writes into what it got never alters the
cache. Thread safety: the store serialises put/delete; reads of a dict entry are atomic.
"""

from __future__ import annotations

import threading

import torch

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.errors import EntryUnavailable, Reason
from chunkcache.store.tier import LayerSource


class MemoryTier:
    """Holds ChunkKV objects on `device` ("cuda" for the GPU tier, "cpu" for the CPU tier)."""

    persistent = False

    def __init__(self, kind: str, device: str, pin_memory: bool = False) -> None:
        if kind not in ("gpu", "cpu"):
            raise ValueError(f"MemoryTier kind must be 'gpu' or 'cpu', got {kind!r}")
        if pin_memory and device != "cpu":
            raise ValueError("pinned memory is host memory: device must be 'cpu'")
        self.kind = kind
        self.device = torch.device(device)
        self.pin_memory = pin_memory
        self._entries: dict[str, ChunkKV] = {}
        self._lock = threading.Lock()

    def _own(self, t: torch.Tensor) -> torch.Tensor:
        if self.pin_memory:
            out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            out.copy_(t)
            return out
        if t.device == self.device and t.is_contiguous():
            return t.clone()
        return t.to(self.device, copy=True).contiguous()

    def put(self, kv: ChunkKV, *, owned: bool = False) -> int:
        """Store kv. owned=True: the tensors are fresh and unshared (e.g. just decoded), keep them."""
        if owned and kv.keys.device == self.device and not self.pin_memory and kv.keys.is_contiguous():
            stored = kv
        else:
            stored = ChunkKV(kv.key, kv.fingerprint, kv.token_ids, kv.base_position,
                             self._own(kv.keys), self._own(kv.values))
        with self._lock:
            self._entries[kv.key] = stored
        return stored.nbytes

    def get(self, key: str, fingerprint: str | None) -> ChunkKV:
        """The stored entry (do not modify it). fingerprint None: no check (internal moves)."""
        kv = self._entries[key]  # KeyError = miss
        if fingerprint is not None and kv.fingerprint != fingerprint:
            raise EntryUnavailable(Reason.FINGERPRINT_MISMATCH,
                                   f"entry is for {kv.fingerprint!r}, asked for {fingerprint!r}", drop=False)
        return kv

    def open_layers(self, key: str, fingerprint: str) -> LayerSource:
        kv = self.get(key, fingerprint)
        return LayerSource(kv.key, kv.fingerprint, kv.token_ids, kv.base_position, kv.keys.shape[0],
                           read=lambda i: (kv.keys[i], kv.values[i]))

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def contains(self, key: str) -> bool:
        return key in self._entries

    def scan(self) -> list[tuple[str, int]]:
        return []  # volatile: empty when the store opens

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
