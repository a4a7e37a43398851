"""A malformed entry with a valid header checksum is corrupt: the request gets a miss, the entry is dropped.

Each case is a header a buggy or foreign writer could produce; before the strict parser they raised
ValueError / RuntimeError / TypeError out of the store (a 422 or 500 per request) and the file stayed.
"""

from __future__ import annotations

import json

import pytest
from entry_mutation import rewrite, set_meta
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


def disk_only(tmp_path) -> ChunkStore:  # type: ignore[no-untyped-def]
    return ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path)))


def _shape(tensors: dict, meta: dict) -> None:
    shape = json.loads(meta["shape"])
    meta["shape"] = json.dumps([shape[0], shape[1] * 2, shape[2], shape[3] // 2])  # same numel, other heads


def _slot_shape(tensors: dict, meta: dict) -> None:
    n, h, L, d = tensors["keys"]["shape"]
    tensors["keys"]["shape"] = [n, h, L * d]  # same bytes, 3-d


CASES = {
    "dtype_not_a_dtype": set_meta("dtype", "Tensor"),  # getattr(torch, ...) accepted any attribute
    "dtype_differs_from_tensors": set_meta("dtype", "float16"),  # IdentityCodec.decode ValueError
    "dtype_int": set_meta("dtype", "int64"),
    "shape_differs_from_tensors": _shape,  # reshape RuntimeError
    "slot_not_4d": _slot_shape,
    "token_ids_short": set_meta("token_ids", "[1, 2]"),  # ChunkKV ValueError
    "token_ids_not_ints": set_meta("token_ids", '["a", null]'),
    "base_position_negative": set_meta("base_position", "-3"),
    "unknown_codec": set_meta("codec", "zstd"),
    "checksums_short": lambda t, m: m.__setitem__("checksums", json.dumps(
        {k: v[:1] for k, v in json.loads(m["checksums"]).items()})),
    "shape_not_json": set_meta("shape", "[4, 2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_entry_is_a_dropped_miss(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    kv = make_kv(1)
    with disk_only(tmp_path) as store:
        assert store.put(kv)
        path = store.tier("disk").path(kv.key)
        path.write_bytes(rewrite(path.read_bytes(), CASES[case]))
        faults: list[str] = []
        assert store.get(kv.key, FP, faults=faults) is None
        assert len(faults) == 1 and faults[0].startswith("corrupt: "), faults
        assert not path.exists() and not store.catalog.get(kv.key).on_disk  # dropped
        assert store.put(kv) and same(store.get(kv.key, FP), kv)  # recomputed, stored, served


@pytest.mark.parametrize("case", ["dtype_differs_from_tensors", "shape_differs_from_tensors"])
def test_malformed_entry_is_refused_before_any_layer_is_streamed(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    kv = make_kv(2)
    with disk_only(tmp_path) as store:
        assert store.put(kv)
        path = store.tier("disk").path(kv.key)
        path.write_bytes(rewrite(path.read_bytes(), CASES[case]))
        assert store.get_layers(kv.key, FP) is None
        assert store.stats()["fallbacks"] == {"corrupt": 1} and not path.exists()


def test_unmodified_rewrite_still_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The helper itself keeps a valid entry valid (so the cases above fail for their edit alone)."""
    kv = make_kv(3)
    with disk_only(tmp_path) as store:
        assert store.put(kv)
        path = store.tier("disk").path(kv.key)
        path.write_bytes(rewrite(path.read_bytes(), lambda t, m: None))
        assert same(store.get(kv.key, FP), kv)
