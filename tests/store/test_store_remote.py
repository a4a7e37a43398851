"""Remote tier on a real redis-server: sharing between processes, server down mid-request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis
import torch
import store_worker
from store_kvgen import FP, make_kv, same
from servers import RedisServer

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

ROOT = Path(__file__).resolve().parents[2]


def remote_store(url: str, **kw) -> ChunkStore:  # type: ignore[no-untyped-def]
    return ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20),
                                         TierConfig("remote", url=url, write_through=True, **kw)), catalog=False))


def test_remote_roundtrip_and_promotion(redis_url):
    kv = make_kv(1)
    with remote_store(redis_url) as a:
        assert a.put(kv)
    with remote_store(redis_url, codec="int8") as b:
        got = b.get(kv.key, FP)
        assert same(got, kv)  # the reader decodes whatever codec the writer used
        assert b.tier_of(kv.key) == ["cpu", "remote"]
        assert b.stats()["tiers"]["remote"]["hits"] == 1
        layers = list(remote_store(redis_url).get_layers(kv.key, FP))
        assert all(__import__("torch").equal(k, kv.keys[i]) for i, k, _ in layers)


def test_two_processes_share_chunks(redis_url):
    seeds = ["11", "12", "13"]
    w = store_worker.run(ROOT, "write-remote", redis_url, *seeds, timeout=120)
    assert w.returncode == 0, w.stderr
    assert json.loads(w.stdout.splitlines()[-1])["ok"]
    r = store_worker.run(ROOT, "read-remote", redis_url, *seeds, "14", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"11": "ok", "12": "ok", "13": "ok", "14": "miss"}


def test_corrupt_remote_blob(redis_url):
    kv = make_kv(2)
    with remote_store(redis_url) as a:
        a.put(kv)
    client = redis.Redis.from_url(redis_url)
    name = "chunkcache:kv:" + kv.key
    blob = bytearray(client.get(name))
    blob[-3] ^= 0x10
    client.set(name, bytes(blob))
    with remote_store(redis_url) as b:
        assert b.get(kv.key, FP) is None
        assert b.stats()["fallbacks"] == {"checksum_mismatch": 1}
        assert not client.exists(name)  # dropped


def test_redis_down_mid_request():
    server = RedisServer().start()
    try:
        kv, kv2 = make_kv(3), make_kv(4)
        store = ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=kv.nbytes),
                                              TierConfig("remote", url=server.url, write_through=True,
                                                         timeout_s=0.5, retry_after_s=0.5)), catalog=False))
        assert store.put(kv) and store.put(kv2)  # kv now only in Redis (CPU holds one)
        store.flush()
        server.stop()
        t0 = time.monotonic()
        faults: list[str] = []
        assert store.get(kv.key, FP, faults=faults) is None
        assert len(faults) == 1 and faults[0].startswith("remote_unavailable: ") and "remote tier" in faults[0]
        assert store.get(kv.key, FP) is None  # second request fails fast (server marked down)
        assert time.monotonic() - t0 < 3
        assert store.stats()["fallbacks"] == {"remote_unavailable": 2}
        assert store.put(make_kv(5))  # CPU tier still works; the remote write is recorded as failed
        store.flush()
        assert store.stats()["put_failures"].get("remote_unavailable") == 1
        assert same(store.get(make_kv(5).key, FP), make_kv(5))
        server.start()  # the same port: the tier reconnects after retry_after_s
        time.sleep(0.6)
        assert store.put(kv)
        store.flush()  # the remote write is write-behind: wait for it before another store reads
        assert same(ChunkStore(StoreConfig(tiers=(TierConfig("remote", url=server.url),),
                                           catalog=False)).get(kv.key, FP), kv)
        store.close()
    finally:
        server.cleanup()


def test_concurrent_misses_on_two_replicas_last_complete_write_wins(redis_url, pg_url):
    """Two replicas (stores sharing Redis and a PostgreSQL catalog) both miss one chunk and write their
    own computation of it at once, many times: every read is one writer's KV, whole, never a mix."""
    import threading


    from chunkcache.store.chunk_kv import ChunkKV

    base = make_kv(21, 64)
    mine = [base, ChunkKV(base.key, base.fingerprint, base.token_ids, base.base_position,
                          base.keys + 1e-3, base.values - 1e-3)]  # the other replica's slightly different numerics
    cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20), TierConfig("remote", url=redis_url,
                                                                                  write_through=True)),
                      catalog_url=pg_url)
    stores = [ChunkStore(cfg), ChunkStore(cfg)]
    go = threading.Barrier(2)

    def write(i: int) -> None:
        go.wait()
        for _ in range(20):
            assert stores[i].put(mine[i])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    reader = remote_store(redis_url)
    reads = []
    while any(t.is_alive() for t in threads):
        try:
            reads.append(reader.tier("remote").get(base.key, FP))
        except KeyError:  # not written yet
            pass
    for t in threads:
        t.join()
    for s in stores:
        s.flush()  # the Redis writes run in each store's background writer
    reads.append(reader.tier("remote").get(base.key, FP))
    assert reads and all(same(r, mine[0]) or same(r, mine[1]) for r in reads)
    assert stores[0].catalog.get(base.key).on_remote and stores[0].stats()["put_failures"] == {}
    for s in (*stores, reader):
        s.close()


def test_entry_replaced_while_streaming_layers_is_never_served(redis_url):
    """Layers are read from Redis as the stream asks for them; if another node overwrites the entry in
    between (here: a shorter, int8 copy), the next layer fails verification instead of mixing versions."""
    import pytest

    from chunkcache.store.errors import EntryUnavailable
    from chunkcache.store.remote_tier import RemoteTier

    kv = make_kv(31, 64)
    tier, other = RemoteTier(redis_url), RemoteTier(redis_url, codec="int8")
    tier.put(kv)
    src = tier.open_layers(kv.key, FP)
    k0, v0 = src.read(0)
    assert torch.equal(k0, kv.keys[0]) and torch.equal(v0, kv.values[0])
    other.put(kv)  # same chunk, another encoding: a concurrent writer's last complete write
    with pytest.raises(EntryUnavailable):
        src.read(1)
    again = tier.open_layers(kv.key, FP)  # a new open sees the new entry whole
    assert again.read(1)[0].shape == kv.keys[1].shape
    tier.close()
    other.close()
