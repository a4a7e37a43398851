"""Writes to slow tiers leave the request path: queued, bounded, flushed on close, failures reported."""

from __future__ import annotations

import threading
import time

import pytest
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig
from chunkcache.store.write_behind import WriteBehind


def _store(tmp_path, write_queue=64) -> ChunkStore:  # type: ignore[no-untyped-def]
    tiers = (TierConfig("cpu", budget_bytes=1 << 24), TierConfig("disk", write_through=True))
    return ChunkStore(StoreConfig(tiers=tiers, cache_dir=str(tmp_path), write_queue=write_queue))


def _disk_only(tmp_path) -> ChunkStore:  # type: ignore[no-untyped-def]
    return ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path)))


def _wrap_disk_put(store, monkeypatch, before, after=lambda kv: None):  # type: ignore[no-untyped-def]
    """The disk tier's put runs `before(kv)` (which may wait or raise), the real write, then `after(kv)`."""
    disk = store.tier("disk")
    real = disk.put

    def put(kv):  # type: ignore[no-untyped-def]
        before(kv)
        ok = real(kv)
        after(kv)
        return ok

    monkeypatch.setattr(disk, "put", put)


def test_put_returns_before_the_disk_write_and_flush_lands_it(tmp_path, monkeypatch):
    kv = make_kv(1)
    gate, written = threading.Event(), threading.Event()
    with _store(tmp_path) as store:
        _wrap_disk_put(store, monkeypatch, lambda kv: gate.wait(30), lambda kv: written.set())
        assert store.put(kv)  # returns while the disk write is held at the gate
        assert not written.is_set()
        assert store.tier_of(kv.key) == ["cpu"] and same(store.get(kv.key, FP), kv)  # memory tier at once
        gate.set()
        store.flush()
        assert written.is_set()
        assert store.tier_of(kv.key) == ["cpu", "disk"]
        assert store.catalog.get(kv.key).on_disk
    with _disk_only(tmp_path) as fresh:  # readable from disk by another store
        assert same(fresh.get(kv.key, FP), kv)


def test_close_flushes_pending_writes(tmp_path, monkeypatch):
    kvs = [make_kv(i) for i in range(4)]
    store = _store(tmp_path)
    _wrap_disk_put(store, monkeypatch, lambda kv: time.sleep(0.05))
    for kv in kvs:
        store.put(kv)
    assert store._writer.pending > 0  # still queued when close() is called
    store.close()
    with _disk_only(tmp_path) as fresh:
        assert all(same(fresh.get(kv.key, FP), kv) for kv in kvs)


def test_failed_write_back_is_reported_and_the_writer_goes_on(tmp_path, monkeypatch):
    bad, good = make_kv(1), make_kv(2)
    with _store(tmp_path) as store:
        def fail_bad(kv):  # type: ignore[no-untyped-def]
            if kv.key == bad.key:
                raise RuntimeError("controller on fire")

        _wrap_disk_put(store, monkeypatch, fail_bad)
        assert store.put(bad) and store.put(good)
        store.flush()
        st = store.stats()
        assert st["put_failures"] == {"io_error": 1}
        assert st["recent_faults"][-1]["op"] == "put" and "controller on fire" in st["recent_faults"][-1]["detail"]
        assert store.tier_of(bad.key) == ["cpu"] and store.tier_of(good.key) == ["cpu", "disk"]


def test_the_queue_is_bounded(tmp_path, monkeypatch):
    """write_queue=1: a put waits (at most write_wait_s, measured) while a write is queued, so at most ~2 chunks
    wait in memory; with a wait long enough for the 0.2 s writes, every chunk lands."""
    with ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 24), TierConfig("disk", write_through=True)),
                                cache_dir=str(tmp_path), write_queue=1, write_wait_s=1.0)) as store:
        _wrap_disk_put(store, monkeypatch, lambda kv: time.sleep(0.2))
        seen = []
        for i in range(4):
            store.put(make_kv(i))
            seen.append(store._writer.pending)
        assert max(seen) <= 2
        store.flush()
        assert store.stats()["tiers"]["disk"]["entries"] == 4
        writer = store.stats()["writer"]
        assert writer["queued"] == 4 and writer["dropped"] == 0 and 0.1 < writer["max_wait_s"] < 1.0


def test_memory_hit_streams_without_a_thread(tmp_path):
    kv = make_kv(3)
    with _store(tmp_path) as store:
        store.put(kv)
        store.flush()
        before = threading.active_count()
        stream = store.get_layers(kv.key, FP, borrow=True)
        layers = list(stream)
        assert stream._thread is None and threading.active_count() == before
        assert [i for i, _, _ in layers] == list(range(kv.keys.shape[0]))
        assert all((k == kv.keys[i]).all() and (v == kv.values[i]).all() for i, k, v in layers)
    with _disk_only(tmp_path) as fresh:  # a disk hit still reads ahead in a thread
        stream = fresh.get_layers(kv.key, FP)
        layers = list(stream)
        assert stream._thread is not None and len(layers) == kv.keys.shape[0]


def test_write_behind_runs_jobs_in_order_and_inline_after_close():
    done: list[int] = []
    w = WriteBehind(2)
    for i in range(5):
        w.submit(lambda i=i: done.append(i))
    w.close()
    assert done == [0, 1, 2, 3, 4]
    w.submit(lambda: done.append(5))  # closed: runs inline
    assert done[-1] == 5
    with pytest.raises(ValueError, match="max_pending"):
        WriteBehind(0)
