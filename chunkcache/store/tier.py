"""What every tier offers the store, and the per-layer source used by pipelined loading."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from chunkcache.store.chunk_kv import ChunkKV


@dataclass
class LayerSource:
    """An opened entry that can be read one layer at a time.

    read(i) -> (k, v), each [n_kv_heads, L, head_dim], verified (raises EntryUnavailable if not).
    read must be callable from a background thread. close() releases files or buffers.
    """

    key: str
    fingerprint: str
    token_ids: tuple[int, ...]
    base_position: int
    n_layers: int
    read: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    close: Callable[[], None] = field(default=lambda: None)


class Tier(Protocol):
    """Storage of one tier. Budgets and eviction order live in the store, not here.

    get/open_layers raise KeyError when the tier has nothing for the key and EntryUnavailable when
    it has something unusable; put raises TierWriteError and leaves nothing partial behind.
    """

    kind: str
    persistent: bool

    def put(self, kv: ChunkKV) -> int:
        """Store kv (replacing any entry of that key); return the bytes it occupies in this tier."""
        ...

    def get(self, key: str, fingerprint: str | None) -> ChunkKV:
        """The entry, verified; fingerprint None skips the model check (moves between tiers)."""
        ...

    def open_layers(self, key: str, fingerprint: str) -> LayerSource: ...

    def delete(self, key: str) -> None: ...

    def contains(self, key: str) -> bool: ...

    def scan(self) -> Iterable[tuple[str, int]]:
        """(key, bytes) of entries already present when the store opens (oldest first)."""
        ...

    def close(self) -> None: ...
