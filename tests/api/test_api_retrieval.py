"""Chunk texts table + faiss index persistence and rebuild; token-aware chunking with the real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.chunking import ChunkingConfig, split_text


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _nearest(index: ChunkIndex, vec: np.ndarray) -> str:
    (vec_id, _), *_ = index.vectors.search(vec, 1)
    return index.table.by_vec_ids([vec_id])[vec_id].key


@pytest.fixture()
def filled(tmp_path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    vecs = _unit(rng, 5)
    index = ChunkIndex(tmp_path)
    index.add([f"k{i}" for i in range(5)], [f"text {i}" for i in range(5)], [3] * 5, "doc", vecs)
    index.close()
    return tmp_path, vecs


def test_api_index_persists_and_searches(filled) -> None:  # type: ignore[no-untyped-def]
    path, vecs = filled
    index = ChunkIndex(path)
    assert index.stats() == {"chunks": 5, "embedded": 5, "documents": 1, "tokens": 15, "vectors": 5}
    assert [_nearest(index, v) for v in vecs] == [f"k{i}" for i in range(5)]
    rec = index.get("k3")
    assert rec.text == "text 3" and rec.doc_id == "doc" and rec.has_embedding and rec.created.tzinfo
    assert index.delete("k3").key == "k3" and index.get("k3") is None and index.delete("k3") is None
    index.close()
    again = ChunkIndex(path)
    assert len(again.vectors) == 4 and _nearest(again, vecs[3]) != "k3"
    again.add(["k0"], ["text 0"], [3], "other", vecs[:1])  # re-adding a key keeps one row and one vector
    assert again.stats()["chunks"] == 4 and len(again.vectors) == 4 and again.get("k0").doc_id == "other"


@pytest.mark.parametrize("damage", ["missing", "garbage", "stale"])
def test_api_index_file_rebuilt_from_table(filled, damage: str) -> None:  # type: ignore[no-untyped-def]
    path, vecs = filled
    f = path / "index.faiss"
    if damage == "missing":
        f.unlink()
    elif damage == "garbage":
        f.write_bytes(b"not a faiss index" * 10)
    else:
        index = ChunkIndex(path)
        index.vectors.remove([1, 2])
        index.vectors.save()
    index = ChunkIndex(path)
    assert len(index.vectors) == 5 and [_nearest(index, v) for v in vecs] == [f"k{i}" for i in range(5)]


def test_api_chunking_respects_token_budget(smollm_dir) -> None:  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(smollm_dir)
    paras = [" ".join(f"Sentence {p}.{s} talks about topic {p * 7 + s}." for s in range(6)) for p in range(5)]
    text = "\n\n".join(paras)
    cfg = ChunkingConfig(chunk_tokens=48, overlap_tokens=8)
    chunks = split_text(text, tok, cfg)
    assert len(chunks) > 3 and all(len(tok.encode(c, add_special_tokens=False)) <= 48 for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())  # nothing lost, order kept
    long = "word " * 300 + "end."
    windows = split_text(long, tok, cfg)
    assert all(len(tok.encode(w, add_special_tokens=False)) <= 48 for w in windows)
    assert windows[0].split()[-8:] == windows[1].split()[:8]  # overlapping windows
    assert windows[-1].endswith("end.") and split_text("  \n\n ", tok, cfg) == []
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkingConfig(chunk_tokens=32, overlap_tokens=16)


def test_api_index_refreshes_from_a_table_shared_with_another_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two replicas over one chunk table: each sees the other's adds and deletes at its next refresh."""
    rng = np.random.default_rng(1)
    vecs = _unit(rng, 4)
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    a, b = ChunkIndex(tmp_path / "a", table_url=url), ChunkIndex(tmp_path / "b", table_url=url)
    a.add(["k0", "k1"], ["t0", "t1"], [2, 2], "doc", vecs[:2])
    assert a.refresh() is False and len(a.vectors) == 2  # its own change needs no rebuild
    assert len(b.vectors) == 0 and b.refresh() is True and len(b.vectors) == 2
    assert [_nearest(b, v) for v in vecs[:2]] == ["k0", "k1"]
    b.add(["k2", "k0"], ["t2", "t0"], [2, 2], "doc", vecs[2:4])  # k0 re-added by b: one row, new vector
    assert a.table.count()["chunks"] == 3 and a.refresh() is True
    assert [_nearest(a, v) for v in vecs[1:4]] == ["k1", "k2", "k0"]
    a.delete("k1")
    assert b.refresh() is True and len(b.vectors) == 2 and b.get("k1") is None
    assert b.refresh() is False and b.refreshes == 2
    a.close()
    b.close()
