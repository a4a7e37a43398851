"""Concurrent puts and gets of the same keys from threads and from processes."""

from __future__ import annotations

import threading
from pathlib import Path

import store_worker
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

ROOT = Path(__file__).resolve().parents[2]


def test_threads_put_and_get_same_keys(tmp_path):
    cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=3 * make_kv(0).nbytes),
                             TierConfig("disk", write_through=True)), cache_dir=str(tmp_path),
                      write_wait_s=30.0)  # 6 threads outrun fsync: wait for the queue rather than drop writes
    kvs = [make_kv(i) for i in range(4)]
    errors: list[str] = []
    with ChunkStore(cfg) as store:
        def work(t: int) -> None:
            for j in range(30):
                kv = kvs[(t + j) % 4]
                store.put(kv)
                got = store.get(kv.key, FP)
                if got is not None and not same(got, kv):
                    errors.append(f"thread {t}: wrong KV")
                for layer, k, _ in store.get_layers(kv.key, FP) or []:
                    if not bool((k == kv.keys[layer]).all()):
                        errors.append(f"thread {t}: wrong layer")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        st = store.stats()
        assert st["fallbacks"] == {} and st["put_failures"] == {}
        assert st["tiers"]["cpu"]["bytes"] <= 3 * make_kv(0).nbytes
        assert all(same(store.get(kv.key, FP), kv) for kv in kvs)


def test_processes_put_same_key(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        store_worker.run(ROOT, "put-same", str(tmp_path), "7", "15", timeout=120))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    with ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path))) as store:
        expected = make_kv(7, **store_worker.CRASH_SHAPE)
        assert same(store.get(expected.key, FP), expected)
        assert store.stats()["fallbacks"] == {}
        assert store.catalog.keys() == [expected.key]
    assert not list(tmp_path.rglob("*.tmp"))
