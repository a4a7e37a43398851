"""Counters behind ChunkStore.stats(). Torch-free, thread safe."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

from chunkcache.store.errors import Reason

log = logging.getLogger("chunkcache.store")


class StoreStats:
    """Per-tier hits, misses, evictions, demotions, promotions; faults by reason with recent events."""

    def __init__(self, tiers: list[str], max_recent: int = 100) -> None:
        self.tiers = list(tiers)
        self._lock = threading.Lock()
        self.gets = 0
        self.hits = 0
        self.misses = 0
        self.per_tier: dict[str, Counter[str]] = {t: Counter() for t in tiers}
        self.fallbacks: Counter[str] = Counter()
        self.put_failures: Counter[str] = Counter()
        self.writer: Counter[str] = Counter()  # queued, dropped jobs; wait_s, max_wait_s of puts for queue room
        self.recent: deque[dict[str, object]] = deque(maxlen=max_recent)

    def count(self, tier: str, event: str, n: int = 1) -> None:
        with self._lock:
            self.per_tier[tier][event] += n

    def lookup(self, hit_tier: str | None) -> None:
        """One get(): hit in hit_tier (misses recorded for the faster tiers tried), or a miss."""
        with self._lock:
            self.gets += 1
            for t in self.tiers:
                if t == hit_tier:
                    self.per_tier[t]["hits"] += 1
                    break
                self.per_tier[t]["misses"] += 1
            if hit_tier is None:
                self.misses += 1
            else:
                self.hits += 1

    def queued(self, waited_s: float, ok: bool) -> None:
        """One submit to the background writer: how long it waited for room, and whether it got in."""
        with self._lock:
            self.writer["queued" if ok else "dropped"] += 1
            self.writer["wait_s"] += waited_s
            self.writer["max_wait_s"] = max(self.writer["max_wait_s"], waited_s)

    def fault(self, key: str, tier: str, reason: Reason, detail: str = "", *, write: bool = False) -> None:
        """A read fault (falls back to the next tier or recomputation) or a failed write."""
        with self._lock:
            (self.put_failures if write else self.fallbacks)[reason.value] += 1
            self.recent.append({"time": time.time(), "key": key, "tier": tier, "op": "put" if write else "get",
                                "reason": reason.value, "detail": detail})
        log.warning("chunk %s… %s on %s tier: %s %s", key[:12], "put failed" if write else "unusable",
                    tier, reason.value, detail)

    def snapshot(self, tier_bytes: dict[str, int], tier_entries: dict[str, int],
                 budgets: dict[str, int | None]) -> dict[str, object]:
        """JSON-able dict; bytes/entries/budget are this process's view of each tier."""
        with self._lock:
            tiers = {}
            for t in self.tiers:
                c = self.per_tier[t]
                tiers[t] = {"hits": c["hits"], "misses": c["misses"], "bytes": tier_bytes.get(t, 0),
                            "entries": tier_entries.get(t, 0), "budget_bytes": budgets.get(t),
                            "evictions": c["evictions"], "demotions": c["demotions"],
                            "promotions": c["promotions"], "puts": c["puts"]}
            return {"gets": self.gets, "hits": self.hits, "misses": self.misses,
                    "hit_ratio": self.hits / self.gets if self.gets else 0.0, "tiers": tiers,
                    "fallbacks": dict(self.fallbacks), "put_failures": dict(self.put_failures),
                    "writer": {k: self.writer[k] for k in ("queued", "dropped", "wait_s", "max_wait_s")},
                    "recent_faults": list(self.recent)}
