"""Eviction policies alone (torch-free) and LRU vs cost-aware on a Zipf workload."""

from __future__ import annotations

import random

import pytest

from chunkcache.store.eviction import CostAwarePolicy, LRUPolicy, estimate_recompute_cost, make_policy


def test_lru_order_and_exclude():
    p = LRUPolicy()
    for k in "abc":
        p.insert(k, 1, 1.0)
    p.touch("a")
    assert p.pop_victim(exclude={"b"}) == "c"
    assert p.pop_victim() == "b" and p.pop_victim() == "a" and p.pop_victim() is None


def test_gdsf_priority_and_ageing():
    p = CostAwarePolicy()
    p.insert("big", 100, 100.0)  # 1 * 100/100 = 1
    p.insert("small", 10, 100.0)  # 1 * 100/10 = 10
    p.insert("cheap", 10, 1.0)  # 0.1
    assert p.pop_victim() == "cheap"
    assert p.pop_victim(exclude={"big"}) == "small"
    assert "big" in p and len(p) == 1
    p.insert("new", 10, 5.0)  # clock is now 10: priority 10.5 beats big (1)
    assert p.pop_victim() == "big"


def test_gdsf_frequency_counts():
    p = CostAwarePolicy()
    p.insert("a", 10, 10.0)
    p.insert("b", 10, 10.0)
    for _ in range(3):
        p.touch("a")
    assert p.pop_victim() == "b"


def test_make_policy_and_cost_estimate():
    assert isinstance(make_policy("lru"), LRUPolicy) and isinstance(make_policy("cost"), CostAwarePolicy)
    with pytest.raises(ValueError):
        make_policy("fifo")
    assert estimate_recompute_cost(1024, 30) > 2 * estimate_recompute_cost(512, 30)


def simulate(policy_name: str, seed: int = 0, n_chunks: int = 400, n_requests: int = 8000,
             budget_frac: float = 0.1, alpha: float = 1.0) -> tuple[float, float]:
    """Object hit ratio and recompute-cost-weighted hit ratio of a byte-budgeted cache."""
    rng = random.Random(seed)
    lengths = [rng.choice([64, 128, 256, 512, 1024]) for _ in range(n_chunks)]
    sizes = [n * 30 * 3 * 64 * 4 * 2 for n in lengths]
    costs = [estimate_recompute_cost(n, 30) for n in lengths]
    order = list(range(n_chunks))
    rng.shuffle(order)  # popularity independent of size
    weights = [1.0 / (r + 1) ** alpha for r in range(n_chunks)]
    budget = budget_frac * sum(sizes)
    p, used, resident = make_policy(policy_name), 0, set()
    hits = hit_cost = total_cost = 0.0
    for c in rng.choices(order, weights=weights, k=n_requests):
        total_cost += costs[c]
        if c in resident:
            hits += 1
            hit_cost += costs[c]
            p.touch(c)
            continue
        while used + sizes[c] > budget:
            v = p.pop_victim()
            resident.discard(v)
            used -= sizes[v]
        p.insert(c, sizes[c], costs[c])
        resident.add(c)
        used += sizes[c]
    return hits / n_requests, hit_cost / total_cost


def test_cost_aware_beats_lru_on_zipf():
    lru, cost = simulate("lru"), simulate("cost")
    assert cost[0] > lru[0] + 0.05, (lru, cost)
    assert cost[1] > lru[1], (lru, cost)


def test_per_key_bookkeeping_is_dropped_with_the_entry():
    """A long-running process puts endless distinct keys (agent responses): the store's per-key costs must
    leave with the evicted entries, or memory grows without bound."""
    from store_kvgen import make_kv

    from chunkcache.store.chunk_store import ChunkStore
    from chunkcache.store.config import StoreConfig

    one = make_kv(0).nbytes
    store = ChunkStore(StoreConfig.memory_only(budget_bytes=5 * one))
    for seed in range(200):
        store.put(make_kv(seed))
    cpu = store.stats()["tiers"]["cpu"]
    assert cpu["entries"] == 5 and cpu["evictions"] == 195
    assert set(store._costs) == {make_kv(s).key for s in range(195, 200)}
