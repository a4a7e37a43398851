"""Prefix mode's memory of recent prompts: the longest token prefix shared with one is reused (vLLM-style APC).

Holds the prompt KV of the last `capacity` prefix-mode prefills (LRU); a Blender has one when its owner asks
(the agents runtime does: its turns repeat long prefixes). A new prompt copies the KV of its longest common
token prefix with any entry and computes the rest; KV of an identical prefix is exact.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from chunkcache.runner.kv_cache import KVCache


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = torch.tensor(a[:n], device="cpu"), torch.tensor(b[:n], device="cpu")  # host token ids
    diff = (x != y).nonzero()
    return int(diff[0]) if diff.numel() else n


class PrefixCache:
    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"prefix cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def lookup(self, ids: tuple[int, ...]) -> tuple[int, tuple[torch.Tensor, torch.Tensor] | None]:
        """(length of the longest shared prefix, (keys, values) [n_layers, n_kv, >=length, d] of that entry)."""
        best, kv, best_ids = 0, None, None
        for entry_ids, entry_kv in self._entries.items():
            n = common_prefix(entry_ids, ids)
            if n > best:
                best, kv, best_ids = n, entry_kv, entry_ids
        if best_ids is not None:
            self._entries.move_to_end(best_ids)
        return best, kv

    def insert(self, ids: tuple[int, ...], cache: KVCache) -> None:
        """Keep the KV of positions 0..len(ids)-1 of cache (copied)."""
        n = len(ids)
        self._entries[ids] = (cache.keys[:, :, :n].clone(), cache.values[:, :, :n].clone())
        self._entries.move_to_end(ids)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
