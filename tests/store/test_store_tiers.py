"""Budgets, eviction with write-back demotion, promotion on hit, pinning, restart."""

from __future__ import annotations

from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

SIZE = make_kv(0).nbytes  # 4 layers x 2 heads x 16 tokens x 8 dims x 4 B x 2 = 8 KiB


def two_tier(tmp_path, cpu=3, disk=None, write_through=False, policy="lru") -> ChunkStore:  # type: ignore[no-untyped-def]
    return ChunkStore(StoreConfig(tiers=(
        TierConfig("cpu", budget_bytes=cpu * SIZE, policy=policy),
        TierConfig("disk", budget_bytes=None if disk is None else disk * (SIZE + 2048), write_through=write_through)),
        cache_dir=str(tmp_path)))


def test_eviction_demotes_to_disk_and_hit_promotes_back(tmp_path):
    kvs = [make_kv(i) for i in range(5)]
    with two_tier(tmp_path) as store:
        for kv in kvs:
            store.put(kv)
        store.flush()  # demotions run in the background writer
        st = store.stats()["tiers"]
        assert st["cpu"]["entries"] == 3 and st["cpu"]["bytes"] <= 3 * SIZE
        assert st["cpu"]["evictions"] == 2 and st["cpu"]["demotions"] == 2
        assert store.tier_of(kvs[0].key) == ["disk"] and store.tier_of(kvs[4].key) == ["cpu"]
        assert same(store.get(kvs[0].key, FP), kvs[0])  # disk hit
        store.flush()
        assert store.tier_of(kvs[0].key) == ["cpu", "disk"]  # promoted, disk copy kept
        assert store.tier_of(kvs[2].key) == ["disk"]  # LRU victim of the promotion, demoted
        st = store.stats()["tiers"]
        assert st["disk"]["hits"] == 1 and st["cpu"]["promotions"] == 1
        for kv in kvs:
            assert same(store.get(kv.key, FP), kv)


def test_lru_order_respects_hits(tmp_path):
    kvs = [make_kv(i) for i in range(4)]
    with two_tier(tmp_path) as store:
        for kv in kvs[:3]:
            store.put(kv)
        store.get(kvs[0].key, FP)  # 0 becomes most recent: 1 is the LRU
        store.put(kvs[3])
        store.flush()
        assert store.tier_of(kvs[1].key) == ["disk"]
        assert "cpu" in store.tier_of(kvs[0].key)


def test_disk_budget_drops_when_no_slower_tier(tmp_path):
    kvs = [make_kv(i) for i in range(6)]
    with two_tier(tmp_path, cpu=1, disk=2) as store:
        for kv in kvs:
            store.put(kv)
        store.flush()
        st = store.stats()["tiers"]["disk"]
        assert st["entries"] == 2 and st["evictions"] >= 3
        assert sum(store.contains(kv.key) for kv in kvs) == 3  # 1 in cpu + 2 on disk
        rows = {k: store.catalog.get(k) for k in (kv.key for kv in kvs)}
        assert sum(r.on_disk for r in rows.values()) <= 3  # catalog follows evictions


def test_pinned_entries_stay(tmp_path):
    kvs = [make_kv(i) for i in range(6)]
    with two_tier(tmp_path, cpu=2) as store:
        store.pin(kvs[0].key)
        for kv in kvs:
            store.put(kv)
        assert "cpu" in store.tier_of(kvs[0].key)
        store.pin(kvs[5].key)
        store.put(make_kv(99))  # cpu full of pinned entries: goes to disk instead
        assert store.tier_of(make_kv(99).key) == ["disk"]
        store.unpin(kvs[0].key)
        store.put(make_kv(100))
        store.flush()
        assert store.tier_of(kvs[0].key) == ["disk"]


def test_too_large_for_every_tier_is_refused(tmp_path):
    store = ChunkStore(StoreConfig.memory_only(SIZE // 2))
    assert store.put(make_kv(1)) is False
    assert store.stats()["put_failures"] == {"too_large": 1}


def test_int8_disk_tier_is_charged_its_compressed_size(tmp_path):
    """A budget between the int8 entry's size (about a quarter) and the fp32 entry's: the int8 disk tier takes
    the entry, the uncompressed one refuses it as too large."""
    kv = make_kv(1)
    for codec, takes in (("int8", True), ("none", False)):
        tiers = (TierConfig("disk", budget_bytes=SIZE // 2 + 2048, codec=codec),)
        with ChunkStore(StoreConfig(tiers=tiers, cache_dir=str(tmp_path / codec))) as store:
            assert store.put(kv) is takes
            assert store.stats()["put_failures"] == ({} if takes else {"too_large": 1})
            assert store.tier_of(kv.key) == (["disk"] if takes else [])


def test_restart_indexes_disk_and_enforces_budget(tmp_path):
    kvs = [make_kv(i) for i in range(5)]
    with two_tier(tmp_path, cpu=1, write_through=True) as store:
        for kv in kvs:
            store.put(kv)
    with two_tier(tmp_path, cpu=1) as store:
        assert store.stats()["tiers"]["disk"]["entries"] == 5
        assert all(same(store.get(kv.key, FP), kv) for kv in kvs)
    with two_tier(tmp_path, cpu=1, disk=2) as store:  # smaller budget: oldest files go
        assert store.stats()["tiers"]["disk"]["entries"] == 2


def test_cost_policy_keeps_expensive_chunks(tmp_path):
    cheap = [make_kv(i) for i in range(3)]
    dear = make_kv(50)
    with two_tier(tmp_path, cpu=3, policy="cost") as store:
        store.put(dear, recompute_cost=1000.0)
        for kv in cheap:
            store.put(kv, recompute_cost=1.0)
        assert "cpu" in store.tier_of(dear.key)  # LRU would have evicted it (oldest)
