"""Remote tier on a real redis-server: only connection errors and timeouts switch the tier off;
errors the server answers with (OOM under noeviction, WRONGTYPE) fail one operation and are counted
by reason; ttl_s, key_prefix and retry_after_s come from the engine configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from servers import RedisServer
from store_kvgen import FP, make_kv, same

from chunkcache.config import EngineConfig, StoreSettings
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    """A server of this test's own: the tests change its memory limit."""
    s = RedisServer().start()
    yield s
    s.cleanup()


def remote_store(url: str) -> ChunkStore:
    return ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20),
                                         TierConfig("remote", url=url, write_through=True, retry_after_s=30)),
                                  catalog=False))


def test_refused_write_leaves_reads_on(server: RedisServer) -> None:
    kept, refused = make_kv(1), make_kv(2)
    with remote_store(server.url) as writer:
        assert writer.put(kept)
        writer.flush()
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every SET is refused with OOM from now on
        assert writer.put(refused)  # the CPU tier takes it
        writer.flush()
        assert writer.stats()["put_failures"] == {"remote_refused": 1}
        assert "OutOfMemoryError" in writer.stats()["recent_faults"][-1]["detail"]
        with remote_store(server.url) as reader:  # the same server still serves reads
            assert same(reader.get(kept.key, FP), kept)
        assert same(writer.tier("remote").get(kept.key, FP), kept)  # and the writer's breaker stayed closed
        client.close()


def test_wrong_type_is_a_counted_miss_and_the_key_is_kept(server: RedisServer) -> None:
    bad, good = make_kv(3), make_kv(4)
    client = redis.Redis.from_url(server.url)
    client.rpush("chunkcache:kv:" + bad.key, b"not an entry")
    with remote_store(server.url) as store:
        store.tier("remote").put(good)
        faults: list[str] = []
        assert store.get(bad.key, FP, faults=faults) is None
        assert faults[0].startswith("remote_refused: ") and "WRONGTYPE" in faults[0]
        assert store.get_layers(bad.key, FP) is None
        assert store.stats()["fallbacks"] == {"remote_refused": 2}
        assert same(store.get(good.key, FP), good)  # the next key still reads
        assert client.type("chunkcache:kv:" + bad.key) == b"list"  # not ours to delete
    client.close()


def test_ttl_prefix_and_retry_after_come_from_the_engine_config(server: RedisServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kv = make_kv(5)
    cfg = EngineConfig(cache_dir=str(tmp_path), store=StoreSettings(
        disk=False, redis_url=server.url, redis_ttl_s=60, redis_key_prefix="tenant-a:", redis_retry_after_s=0.25))
    client = redis.Redis.from_url(server.url)
    with ChunkStore(cfg.store_config()) as store:
        assert store.put(kv)
        store.flush()
        assert 0 < client.ttl("tenant-a:" + kv.key) <= 60  # expires: the shared tier does not only grow
        assert not client.exists("chunkcache:kv:" + kv.key)
        assert store.tier("remote").retry_after_s == 0.25
    client.close()
