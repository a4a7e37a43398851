"""put/get round trips, ownership of returned tensors, the memory-only store, layer streams."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


def disk_store(tmp_path, **tier_kw) -> ChunkStore:  # type: ignore[no-untyped-def]
    return ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20),
                                         TierConfig("disk", write_through=True, **tier_kw)), cache_dir=str(tmp_path)))


def test_memory_only_store_opens_no_catalog_and_no_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path / "never"))
    store = ChunkStore(StoreConfig.memory_only(1 << 20))
    assert store.catalog is None and not (tmp_path / "never").exists()
    assert ChunkStore().catalog is None  # the default config is memory-only too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_put_get_exact_memory_and_disk(tmp_path, dtype):
    kv = make_kv(1, 24, dtype=dtype)
    with disk_store(tmp_path) as store:
        assert store.put(kv)
        assert same(store.get(kv.key, FP), kv)
        store.flush()
        assert store.tier_of(kv.key) == ["cpu", "disk"]
    with disk_store(tmp_path) as store:  # new process view: only the disk has it
        got = store.get(kv.key, FP)
        assert same(got, kv)
        assert store.stats()["tiers"]["disk"]["hits"] == 1
        assert store.tier_of(kv.key) == ["cpu", "disk"]  # promoted
        assert same(store.get(kv.key, FP), kv)
        assert store.stats()["tiers"]["cpu"]["hits"] == 1


def test_returned_tensors_are_the_callers(tmp_path):
    kv = make_kv(2)
    original = make_kv(2)
    store = ChunkStore(StoreConfig.memory_only(1 << 20))
    store.put(kv)
    kv.keys.zero_()  # the caller's tensors after put do not reach the cache
    got = store.get(kv.key, FP)
    assert same(got, original)
    got.values.fill_(7.0)  # nor does writing into what get returned
    assert same(store.get(kv.key, FP), original)


def test_contains_delete_miss(tmp_path):
    kv = make_kv(3)
    with disk_store(tmp_path) as store:
        assert not store.contains(kv.key) and store.get(kv.key, FP) is None
        store.put(kv, source_doc_id="doc-9", text_hash="abc")
        assert store.contains(kv.key)
        store.flush()  # the catalog row and the file are written in the background
        row = store.catalog.get(kv.key)
        assert row.source_doc_id == "doc-9" and row.text_hash == "abc" and row.tiers == ("disk",)
        assert row.shape == tuple(kv.keys.shape) and row.num_tokens == 16 and row.dtype == "float32"
        store.delete(kv.key)
        assert not store.contains(kv.key) and store.get(kv.key, FP) is None
        assert store.catalog.get(kv.key) is None
        st = store.stats()
        assert st["misses"] == 2 and st["fallbacks"] == {}


def test_disk_file_is_plain_safetensors(tmp_path):
    kv = make_kv(4)
    with disk_store(tmp_path) as store:
        store.put(kv)
        path = store.tier("disk").path(kv.key)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["fingerprint"] == FP
        assert torch.equal(f.get_tensor("keys"), kv.keys) and torch.equal(f.get_tensor("values"), kv.values)


@pytest.mark.parametrize("where", ["cpu", "disk"])
def test_get_layers_streams_every_layer(tmp_path, where):
    kv = make_kv(5, n_layers=6)
    with disk_store(tmp_path) as store:
        store.put(kv)
    with disk_store(tmp_path) as store:
        if where == "cpu":
            store.get(kv.key, FP)  # promote first
        stream = store.get_layers(kv.key, FP)
        assert stream is not None and stream.n_layers == 6 and stream.token_ids == kv.token_ids
        seen = []
        for layer, k, v in stream:
            assert k.shape == kv.keys.shape[1:]
            assert torch.equal(k, kv.keys[layer]) and torch.equal(v, kv.values[layer])
            k.zero_()  # caller owns what it got
            seen.append(layer)
        assert seen == list(range(6))
        assert store.tier_of(kv.key)[0] == "cpu"  # a disk stream promotes when complete
        assert same(store.get(kv.key, FP), kv)
        assert store.get_layers("0" * 64, FP) is None


def test_get_layers_early_exit_releases(tmp_path):
    kv = make_kv(6, n_layers=8)
    with disk_store(tmp_path) as store:
        store.put(kv)
    with disk_store(tmp_path) as store:
        stream = store.get_layers(kv.key, FP)
        for layer, _, _ in stream:
            if layer == 1:
                break
        stream.close()
        assert stream._thread is not None and not stream._thread.is_alive()
        assert store.tier_of(kv.key) == ["disk"]  # an incomplete stream promotes nothing
