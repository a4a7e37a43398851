"""Eviction policies: which entry a full tier gives up first. Torch-free.

A policy only orders keys; the tier owns the bytes. Both policies support pinned keys (never
chosen) through the `exclude` argument of `pop_victim`.

- `LRUPolicy`: least recently inserted or accessed first.
- `CostAwarePolicy`: Greedy-Dual-Size-Frequency as in RAGCache's PGDSF,
  priority = clock + frequency * cost / size; the lowest priority goes first and the clock
  rises to the evicted priority (ageing, so once-hot entries eventually leave).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Container
from typing import Protocol


def estimate_recompute_cost(num_tokens: int, n_layers: int, attention_span: int = 2048) -> float:
    """Relative prefill cost of a chunk of `num_tokens` computed alone (arbitrary units).

    Per layer, projections and MLP scale with L and attention with L^2; `attention_span` is the
    length at which both are about equal for a small model. Pass a measured time instead where
    one exists (`ChunkStore.put(..., recompute_cost=seconds)`).
    """
    if num_tokens <= 0 or n_layers <= 0:
        raise ValueError("num_tokens and n_layers must be > 0")
    return float(n_layers) * num_tokens * (1.0 + num_tokens / attention_span)


class EvictionPolicy(Protocol):
    """Orders the keys of one tier for eviction."""

    def insert(self, key: str, size: int, cost: float) -> None: ...

    def touch(self, key: str) -> None: ...

    def remove(self, key: str) -> None: ...

    def pop_victim(self, exclude: Container[str] = ()) -> str | None: ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...


class LRUPolicy:
    """Least recently used: an ordered dict, oldest first."""

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()

    def insert(self, key: str, size: int, cost: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: str) -> None:
        self._order.pop(key, None)

    def pop_victim(self, exclude: Container[str] = ()) -> str | None:
        for key in self._order:
            if key not in exclude:
                del self._order[key]
                return key
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)


class CostAwarePolicy:
    """PGDSF-style: priority = clock + frequency * cost / size, evict the lowest.

    Frequency counts inserts and hits while the key is resident and survives its eviction (as in
    RAGCache, which keeps access statistics for evicted documents too), so a re-inserted popular
    chunk comes back with its history. A lazy-deletion heap keeps pop_victim O(log n).
    """

    def __init__(self, remember: int = 1 << 16) -> None:
        self._clock = 0.0
        self._live: dict[str, tuple[float, int]] = {}  # key -> (priority, stamp)
        self._info: dict[str, tuple[float, int]] = {}  # key -> (cost, size) of resident keys
        self._freq: OrderedDict[str, int] = OrderedDict()  # bounded history of frequencies
        self._remember = remember
        self._heap: list[tuple[float, int, str]] = []
        self._stamp = itertools.count()

    def _push(self, key: str) -> None:
        cost, size = self._info[key]
        priority = self._clock + self._freq.get(key, 1) * cost / max(size, 1)
        stamp = next(self._stamp)
        self._live[key] = (priority, stamp)
        heapq.heappush(self._heap, (priority, stamp, key))

    def _count(self, key: str) -> None:
        self._freq[key] = self._freq.get(key, 0) + 1
        self._freq.move_to_end(key)
        while len(self._freq) > self._remember:
            old, _ = self._freq.popitem(last=False)
            if old in self._live:  # never forget a resident key's frequency
                self._freq[old] = 1

    def insert(self, key: str, size: int, cost: float) -> None:
        if cost <= 0:
            raise ValueError(f"recompute cost must be > 0, got {cost}")
        self._info[key] = (float(cost), int(size))
        self._count(key)
        self._push(key)

    def touch(self, key: str) -> None:
        if key in self._live:
            self._count(key)
            self._push(key)

    def remove(self, key: str) -> None:
        self._live.pop(key, None)
        self._info.pop(key, None)

    def pop_victim(self, exclude: Container[str] = ()) -> str | None:
        skipped: list[tuple[float, int, str]] = []
        victim = None
        while self._heap:
            item = heapq.heappop(self._heap)
            priority, stamp, key = item
            if self._live.get(key) != (priority, stamp):
                continue  # stale heap entry
            if key in exclude:
                skipped.append(item)
                continue
            victim = key
            self._clock = priority
            self.remove(key)
            break
        for item in skipped:
            heapq.heappush(self._heap, item)
        return victim

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __len__(self) -> int:
        return len(self._live)


def make_policy(name: str) -> EvictionPolicy:
    """"lru" or "cost"."""
    if name == "lru":
        return LRUPolicy()
    if name == "cost":
        return CostAwarePolicy()
    raise ValueError(f"unknown eviction policy {name!r} (expected 'lru' or 'cost')")
