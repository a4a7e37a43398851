"""Every fault is a miss with a recorded reason (fallback to recomputation), never wrong KV."""

from __future__ import annotations

import errno
import os

import pytest
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig
from chunkcache.store.errors import EntryUnavailable


def disk_only(tmp_path) -> ChunkStore:  # type: ignore[no-untyped-def]
    return ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path)))


def stored(tmp_path, seed=1):  # type: ignore[no-untyped-def]
    kv = make_kv(seed, 32)
    with disk_only(tmp_path) as store:
        assert store.put(kv)
        path = store.tier("disk").path(kv.key)
    return kv, path


def assert_fallback(store: ChunkStore, kv, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert store.get(kv.key, FP) is None
    st = store.stats()
    assert st["fallbacks"].get(reason, 0) >= 1, st["fallbacks"]
    assert st["recent_faults"][-1]["reason"] == reason and st["recent_faults"][-1]["key"] == kv.key


@pytest.mark.parametrize("where", ["data_first", "data_last", "header_json", "metadata_value"])
def test_flipped_byte(tmp_path, where):
    kv, path = stored(tmp_path)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].decode()
    pos = {"data_first": 8 + n, "data_last": len(raw) - 1, "header_json": 8 + header.index('"shape"') + 2,
           "metadata_value": 8 + header.index('"base_position":"') + len('"base_position":"')}[where]
    raw[pos] ^= 0x01 if where != "metadata_value" else 0x02  # '1' -> '3': still valid JSON and digits
    path.write_bytes(bytes(raw))
    with disk_only(tmp_path) as store:
        assert store.get(kv.key, FP) is None
        reasons = store.stats()["fallbacks"]
        assert set(reasons) <= {"checksum_mismatch", "corrupt"} and sum(reasons.values()) == 1, reasons
        assert not path.exists()  # a known-bad entry is dropped; the next put rewrites it
        assert store.put(kv) and same(store.get(kv.key, FP), kv)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file(tmp_path, keep):
    kv, path = stored(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with disk_only(tmp_path) as store:
        assert_fallback(store, kv, "corrupt")


def test_corrupt_layer_mid_stream(tmp_path):
    kv, path = stored(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # inside the last layer of "values"
    path.write_bytes(bytes(raw))
    with disk_only(tmp_path) as store:
        stream = store.get_layers(kv.key, FP)
        assert stream is not None
        got = []
        with pytest.raises(EntryUnavailable) as e:
            for layer, _, _ in stream:
                got.append(layer)
        assert e.value.reason.value == "checksum_mismatch" and got == [0, 1, 2]
        assert store.stats()["fallbacks"] == {"checksum_mismatch": 1} and not path.exists()


def test_missing_file_behind_catalog_row(tmp_path):
    kv, path = stored(tmp_path)
    path.unlink()
    with disk_only(tmp_path) as store:
        assert_fallback(store, kv, "file_missing")
        assert not store.catalog.get(kv.key).on_disk


def test_catalog_row_missing_for_file(tmp_path):
    kv, path = stored(tmp_path)
    with disk_only(tmp_path) as store:
        store.catalog.delete(kv.key)
    with disk_only(tmp_path) as store:
        assert_fallback(store, kv, "catalog_row_missing")
        assert store.put(kv) and same(store.get(kv.key, FP), kv)  # recomputed and stored again


def test_wrong_fingerprint_is_refused_in_every_tier(tmp_path):
    kv, path = stored(tmp_path)
    with disk_only(tmp_path) as store:
        assert store.get(kv.key, "other-model") is None  # catalog row says another model
        assert store.get_layers(kv.key, "other-model") is None
    with ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20), TierConfig("disk")),
                                cache_dir=str(tmp_path), catalog=False)) as store:
        assert store.get(kv.key, "other-model") is None  # no catalog: the file's own header refuses
        assert store.stats()["fallbacks"] == {"fingerprint_mismatch": 1}
        assert path.exists()  # refused, not destroyed
        assert same(store.get(kv.key, FP), kv)
        assert store.get(kv.key, "other-model") is None  # and in the CPU tier
        assert store.stats()["fallbacks"] == {"fingerprint_mismatch": 2}


def test_disk_full(tmp_path, monkeypatch):
    kv = make_kv(1, 32)
    real_write = os.write

    def full(fd, data):  # type: ignore[no-untyped-def]
        real_write(fd, bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    with ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20), TierConfig("disk", write_through=True)),
                                cache_dir=str(tmp_path))) as store:
        monkeypatch.setattr(os, "write", full)
        assert store.put(kv)  # the CPU tier still took it
        store.flush()  # the disk write runs in the background, and fails there
        monkeypatch.setattr(os, "write", real_write)
        assert store.stats()["put_failures"] == {"disk_full": 1}
        assert store.tier_of(kv.key) == ["cpu"]
        assert not any(p.is_file() for p in tmp_path.rglob("*") if p.suffix in (".tmp", ".safetensors"))
        assert not store.catalog.get(kv.key).on_disk
        assert same(store.get(kv.key, FP), kv)


def test_disk_full_only_tier(tmp_path, monkeypatch):
    kv = make_kv(2, 32)

    def full(fd, data):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    with disk_only(tmp_path) as store:
        monkeypatch.setattr(os, "write", full)
        assert store.put(kv) is False
        monkeypatch.undo()
        assert store.get(kv.key, FP) is None and store.catalog.get(kv.key) is None
