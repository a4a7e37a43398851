"""One tier inside the store: its storage, byte budget, resident index and eviction policy. Torch-free.

Invariant (outside a put in progress): used == sum(sizes.values()) <= budget_bytes (if set), and
the policy orders exactly the keys of `sizes`. `sizes` is this process's view: entries it wrote,
promoted, or found on disk when the store opened.
"""

from __future__ import annotations

from chunkcache.store.config import TierConfig
from chunkcache.store.eviction import EvictionPolicy, make_policy
from chunkcache.store.tier import Tier


class TierSlot:
    def __init__(self, config: TierConfig, tier: Tier) -> None:
        if config.kind != tier.kind:
            raise ValueError(f"tier config kind {config.kind!r} does not match tier {tier.kind!r}")
        self.config = config
        self.tier = tier
        self.name = config.kind
        self.policy: EvictionPolicy = make_policy(config.policy)
        self.sizes: dict[str, int] = {}
        self.used = 0

    @property
    def budget(self) -> int | None:
        return self.config.budget_bytes

    def fits_ever(self, nbytes: int) -> bool:
        """Could an entry of nbytes be held here at all (everything else evicted)?"""
        return self.budget is None or nbytes <= self.budget

    def overflow(self, extra: int = 0) -> int:
        """Bytes to free so that `extra` more bytes fit (0 when they already do)."""
        if self.budget is None:
            return 0
        return max(0, self.used + extra - self.budget)

    def record(self, key: str, nbytes: int, cost: float) -> None:
        self.used += nbytes - self.sizes.get(key, 0)
        self.sizes[key] = nbytes
        self.policy.insert(key, nbytes, cost)

    def forget(self, key: str) -> None:
        self.used -= self.sizes.pop(key, 0)
        self.policy.remove(key)

    def holds(self, key: str) -> bool:
        """Known resident, or present in a persistent tier (another process may have written it)."""
        return key in self.sizes or (self.tier.persistent and self.tier.contains(key))
