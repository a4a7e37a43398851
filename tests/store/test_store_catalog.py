"""The SQL catalog on SQLite (WAL) and on a real PostgreSQL server."""

from __future__ import annotations

import struct
import threading

import pytest

from sqlalchemy import text
from store_kvgen import FP, make_kv, same

from chunkcache.store.catalog import Catalog, ChunkMeta
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


def meta(key: str, **kw) -> ChunkMeta:  # type: ignore[no-untyped-def]
    return ChunkMeta(key, kw.pop("fingerprint", FP), 16, "float32", (4, 2, 16, 8), 8192, 3.0, **kw)


def test_upsert_get_flags_hits_delete(catalog_url):
    cat = Catalog(catalog_url, flush_every=3)
    cat.upsert(meta("a" * 64, source_doc_id="doc1", text_hash="h1", on_disk=True))
    cat.upsert(meta("a" * 64, on_remote=True))  # flags OR, doc ids kept
    row = cat.get("a" * 64)
    assert row.tiers == ("disk", "remote") and row.source_doc_id == "doc1" and row.text_hash == "h1"
    assert row.shape == (4, 2, 16, 8) and row.nbytes == 8192 and row.hits == 0
    cat.set_tier("a" * 64, "disk", False)
    assert cat.get("a" * 64).tiers == ("remote",)
    for _ in range(4):
        cat.touch("a" * 64)  # flushes after 3
    assert cat.get("a" * 64).hits == 4
    cat.flush()
    before = cat.get("a" * 64).last_used
    cat.upsert(meta("b" * 64, fingerprint="other"))
    assert cat.keys() == ["a" * 64, "b" * 64] and cat.keys(FP) == ["a" * 64]
    cat.delete("a" * 64)
    assert cat.get("a" * 64) is None and before is not None
    cat.close()


def test_anchor_rows_are_stored_replaced_and_go_with_their_chunk(catalog_url):
    cat = Catalog(catalog_url)
    rows = struct.pack("<6i", 0, 3, 5, 0, 2, 5)  # int32 [2, 3]
    cat.upsert(meta("a" * 64))
    cat.put_anchors("k" * 64, "a" * 64, 2, 3, rows)
    cat.put_anchors("j" * 64, None, 1, 1, struct.pack("<i", 7))  # not a stored entry's
    assert cat.get_anchors("k" * 64) == (2, 3, rows) and cat.get_anchors("x" * 64) is None
    deeper = rows + struct.pack("<3i", 1, 2, 4)
    cat.put_anchors("k" * 64, "a" * 64, 3, 3, deeper)  # deeper layers replace the row
    assert cat.get_anchors("k" * 64) == (3, 3, deeper)
    with pytest.raises(ValueError, match="int32"):
        cat.put_anchors("k" * 64, "a" * 64, 3, 4, deeper)
    cat.delete("a" * 64)
    assert cat.get_anchors("k" * 64) is None and cat.get_anchors("j" * 64) == (1, 1, struct.pack("<i", 7))
    cat.close()


def test_concurrent_upserts_of_one_key(catalog_url):
    cat = Catalog(catalog_url)
    errors = []

    def work(i: int) -> None:
        try:
            for _ in range(10):
                cat.upsert(meta("c" * 64, on_disk=i % 2 == 0, on_remote=i % 2 == 1))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and cat.get("c" * 64).tiers == ("disk", "remote")
    cat.close()


def test_sqlite_runs_in_wal_mode(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with cat.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    cat.close()


def test_store_with_catalog_url(catalog_url, tmp_path):
    kv = make_kv(3)
    cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 20), TierConfig("disk", write_through=True)),
                      cache_dir=str(tmp_path / "cache"), catalog_url=catalog_url)
    with ChunkStore(cfg) as store:
        store.put(kv, source_doc_id="d")
        assert same(store.get(kv.key, FP), kv)
    with ChunkStore(cfg) as store:
        assert same(store.get(kv.key, FP), kv)
        store.catalog.flush()
        row = store.catalog.get(kv.key)
        assert row.on_disk and row.hits == 2 and row.fingerprint == FP
