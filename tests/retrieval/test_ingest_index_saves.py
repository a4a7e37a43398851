"""Ingestion writes the faiss file once per batch, and the saved file answers searches."""

from __future__ import annotations

import hashlib

import numpy as np

from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.chunking import ChunkingConfig
from chunkcache.retrieval.embedder import DIM
from chunkcache.retrieval.ingest import Document, Ingestor
from chunkcache.retrieval.vector_index import VectorIndex


class HashEmbedder:
    """Deterministic unit vectors from the text's hash (no model)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.stack([np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).normal(size=DIM)
                        for t in texts]).astype(np.float32)  # [n, DIM]
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class KeyOnlyEngine:
    """The engine surface Ingestor uses, with chunk 'KV' reduced to its key."""

    def __init__(self, tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.prompts = self
        self.source = self
        self.store = None

    def chunk_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def key(self, ids: tuple[int, ...]) -> str:
        return hashlib.sha1(repr(ids).encode()).hexdigest()

    def precompute(self, texts: list[str]) -> list[str]:
        return [self.key(self.chunk_ids(t)) for t in texts]

    def flush(self) -> None:
        pass

    def holds(self, ids: tuple[int, ...]) -> bool:
        return False


def test_faiss_file_saved_once_per_ingest(tmp_path, smollm_tokenizer, monkeypatch):
    saves = []
    real_save = VectorIndex.save
    monkeypatch.setattr(VectorIndex, "save", lambda self: (saves.append(1), real_save(self))[1])
    index = ChunkIndex(tmp_path, HashEmbedder())
    saves.clear()
    docs = [Document(" ".join(f"Sentence {i} of document {d} talks about topic {i * d}." for i in range(40)), f"d{d}")
            for d in range(3)]
    res = Ingestor(KeyOnlyEngine(smollm_tokenizer), index, ChunkingConfig(chunk_tokens=32, overlap_tokens=4),
                   fused=False).ingest(docs)
    assert len(res.chunk_keys) > 10 and len(saves) == 1
    index.close()
    reopened = ChunkIndex(tmp_path, HashEmbedder())
    assert len(reopened.vectors) == len(set(res.chunk_keys))
    first = reopened.table.get(res.chunk_keys[0])
    assert reopened.search(first.text, 1)[0].key == res.chunk_keys[0]
    reopened.close()
