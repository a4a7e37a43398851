"""Anchor tensors as entries of the chunk store: same estimates as in memory, bounded, evicted -> recomputed."""

import torch
from agents_tiny import dense, prefiller, prompt

from chunkcache.agents.anchor_pool import AnchorPool
from chunkcache.agents.anchor_tensors import StoreAnchorTensors
from chunkcache.agents.config import AnchorConfig
from chunkcache.blend.config import BlendConfig
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig

KV = BlendConfig.named("kvcomm")


def _pool(runner, budget):
    store = ChunkStore(StoreConfig.memory_only(budget))
    return AnchorPool(AnchorConfig(), runner.fingerprint, loader=StoreAnchorTensors(store, runner.fingerprint)), store


def test_store_backed_pool_matches_in_memory_pool(tiny_runner):
    pool, store = _pool(tiny_runner, 50_000_000)
    ref = prefiller(tiny_runner)
    pf = prefiller(tiny_runner, pool=pool)
    for seed in (1, 2):
        assert pf.prefill(prompt(seed), KV).stats.anchors_added == 2
        ref.prefill(prompt(seed), KV)
    assert all(a.base_k is None and set(a.offsets.values()) == {None} for v in pool.anchors.values() for a in v)
    assert store.stats()["tiers"]["cpu"]["entries"] == 4 + 4  # 4 bases + 4 (anchor, reader) offsets
    for seed in (1, 3):
        got, want = pf.prefill(prompt(seed), KV), ref.prefill(prompt(seed), KV)
        assert got.stats.anchors_hit == want.stats.anchors_hit
        torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    assert (pf.prefill(prompt(1), KV).logits - dense(tiny_runner, prompt(1)).logits).abs().max() < 5e-2


def test_evicted_anchor_is_dropped_and_measured_again(tiny_runner):
    pool, store = _pool(tiny_runner, 50_000_000)
    pf = prefiller(tiny_runner, pool=pool)
    for seed in (1, 2):
        pf.prefill(prompt(seed), KV)
    victim = pool.anchors["a"][0]
    store.delete(pf.anchors.loader._key(victim, "base"))  # as an eviction would
    res = pf.prefill(prompt(1), KV)
    assert res.stats.dense_fallback and any("evicted" in f for f in res.stats.fallbacks)
    assert victim not in pool.anchors["a"] and res.stats.anchors_added >= 1


def test_small_budget_bounds_the_pool(tiny_runner):
    budget = 60_000
    pool, store = _pool(tiny_runner, budget)
    pf = prefiller(tiny_runner, pool=pool)
    for seed in range(1, 8):
        pf.prefill(prompt(seed), KV)
    cpu = store.stats()["tiers"]["cpu"]
    assert cpu["evictions"] > 0 and 0 < cpu["bytes"] <= budget
