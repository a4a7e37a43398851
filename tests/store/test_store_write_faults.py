"""Background writes under real faults: a paused Redis (CLIENT PAUSE: every command waits) and a stopped
PostgreSQL catalog. The request path (put, get) never waits on them; every write that fails or is dropped
is counted in put_failures; an entry evicted before its write ran still lands."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from servers import PostgresServer, RedisServer
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

PAUSE_MS = 3000
FAST_S = 1.0  # a put that waited for the paused server would take up to PAUSE_MS; a loaded 2-core machine took 0.62 s


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.cleanup()


def pause(server: RedisServer) -> None:
    c = redis.Redis.from_url(server.url)
    c.client_pause(PAUSE_MS)
    c.close()


def remote_store(url: str, tmp_path, cpu_entries: int, **kw) -> ChunkStore:  # type: ignore[no-untyped-def]
    through = kw.pop("write_through", True)
    return ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=cpu_entries * make_kv(0).nbytes),
                                         TierConfig("remote", url=url, write_through=through, timeout_s=5)),
                                  cache_dir=str(tmp_path), catalog=True, **kw))


def test_full_queue_drops_and_counts_instead_of_blocking(server: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kvs = [make_kv(i) for i in range(6)]
    with remote_store(server.url, tmp_path, 8, write_queue=2, write_wait_s=0.05) as store:
        pause(server)
        for kv in kvs:
            t0 = time.perf_counter()
            assert store.put(kv)
            assert time.perf_counter() - t0 < FAST_S
            assert same(store.get(kv.key, FP), kv)  # served from the CPU tier meanwhile
        store.flush()
        st = store.stats()
        dropped = st["put_failures"].get("write_queue_full", 0)
        assert dropped >= 2 and st["writer"]["dropped"] == dropped and st["writer"]["max_wait_s"] < FAST_S
        assert st["writer"]["queued"] + dropped == len(kvs)
        client = redis.Redis.from_url(server.url)
        assert sum(client.exists("chunkcache:kv:" + kv.key) for kv in kvs) == len(kvs) - dropped
        client.close()


def test_demotion_does_not_hold_the_store_lock(server: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Write-back: each put evicts one entry, whose demotion to the paused Redis is queued."""
    kvs = [make_kv(i) for i in range(5)]
    with remote_store(server.url, tmp_path, 1, write_through=False) as store:
        pause(server)
        for kv in kvs:
            t0 = time.perf_counter()
            assert store.put(kv)
            assert time.perf_counter() - t0 < FAST_S
        assert all(same(store.get(kv.key, FP), kv) for kv in kvs[-1:])
        store.flush()
        assert store.stats()["tiers"]["cpu"]["demotions"] == 4 and store.stats()["put_failures"] == {}
        assert all(same(store.tier("remote").get(kv.key, FP), kv) for kv in kvs[:4])


def test_entry_evicted_before_its_write_still_lands(server: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, second = make_kv(1), make_kv(2)
    with remote_store(server.url, tmp_path, 1) as store:
        pause(server)
        assert store.put(first) and store.put(second)  # second evicts first from the only memory tier
        store.flush()
        assert store.stats()["put_failures"] == {}
        assert same(store.tier("remote").get(first.key, FP), first)
        assert store.catalog.get(first.key).on_remote


def test_catalog_down_the_tier_writes_still_land_and_are_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    try:
        pg = PostgresServer().start()
    except RuntimeError as e:
        pytest.fail(f"real PostgreSQL server needed: {e}", pytrace=False)
    try:
        kv, later = make_kv(1), make_kv(2)
        cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20), TierConfig("disk", write_through=True)),
                          cache_dir=str(tmp_path), catalog_url=pg.url)
        with ChunkStore(cfg) as store:
            assert store.put(kv)
            store.flush()
            pg.stop()
            t0 = time.perf_counter()
            assert store.put(later)
            assert time.perf_counter() - t0 < FAST_S
            store.flush()
            failures = store.stats()["put_failures"]
            assert failures.get("catalog_unavailable", 0) >= 1 and set(failures) == {"catalog_unavailable"}
            assert store.tier("disk").contains(later.key)  # the file was written all the same
            pg.resume()
    finally:
        pg.cleanup()
