"""One tier inside the store: its storage, byte budget, resident index and eviction policy. Torch-free.

Invariant (outside a put in progress): used == sum(sizes.values()) <= budget_bytes (if set), and
the policy orders exactly the keys of `sizes`. `sizes` is this process's view: entries it wrote,
promoted, or found on disk when the store opened.
"""

from __future__ import annotations

from chunkcache.store.config import TierConfig
from chunkcache.store.errors import Reason, TierWriteError
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

    def require_fit(self, nbytes: int, element_size: int) -> None:
        """Raise TierWriteError(TOO_LARGE) when an entry of nbytes (elements of element_size bytes) could not be
        held here even with everything else evicted; a compressing codec stores about one byte per element."""
        size = nbytes if self.config.codec == "none" else nbytes // element_size
        if self.budget is not None and size > self.budget:
            raise TierWriteError(Reason.TOO_LARGE, f"{nbytes} B over the {self.name} budget {self.budget}")

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
