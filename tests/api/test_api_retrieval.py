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
