"""ChunkIndex: chunk texts (ChunkTable) + embeddings (Embedder) + vector search (VectorIndex).

Files, beside the store catalog in `<cache_dir>/store/`: `chunk_texts.sqlite` and `index.faiss`;
with a table URL (the catalog's PostgreSQL database, shared by replicas) the texts live there and
only the faiss file is local. The table is the source of truth: the faiss index is rebuilt from it
when its file is missing or stale, and, before each search, when the table's version counter is not
the one this process last saw (another replica added or deleted chunks). That check is one
one-row SELECT; the rebuild reads every embedding (exact IndexFlatIP, fine up to ~1e6 chunks).
Search results carry the chunk key, which is the key of the chunk's KV in the ChunkStore.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from chunkcache.retrieval.chunk_table import ChunkRecord, ChunkTable
from chunkcache.retrieval.embedder import DIM, Embedder
from chunkcache.retrieval.vector_index import VectorIndex


@dataclass(frozen=True)
class Hit:
    key: str
    text: str
    score: float
    doc_id: str | None


class ChunkIndex:
    def __init__(self, directory: str | Path | None, embedder: Embedder | None = None,
                 table_url: str | SecretStr | None = None) -> None:
        """directory None: everything in memory. table_url: the chunk table's SQL database (shared)."""
        self.directory = Path(directory) if directory is not None else None
        if table_url is not None:
            self.table = ChunkTable(url=table_url)
        else:
            self.table = ChunkTable(self.directory / "chunk_texts.sqlite" if self.directory else None)
        self.embedder = embedder or Embedder()
        self._lock = threading.Lock()
        self._seen = self.table.version()
        vec_ids, vectors = self.table.embeddings()
        self.vectors = VectorIndex.open(DIM, self.directory / "index.faiss" if self.directory else None,
                                        vec_ids, vectors)
        self.refreshes = 0  # rebuilds after another process changed the table

    def _advance(self, version: int | None) -> None:
        """Our own change produced `version`: skip the rebuild only if no other change came between."""
        if version is not None and version == self._seen + 1:
            self._seen = version

    def refresh(self) -> bool:
        """Rebuild the faiss index from the table if the table's version moved; True if it did."""
        version = self.table.version()
        with self._lock:
            if version == self._seen:
                return False
            vec_ids, vectors = self.table.embeddings()
            fresh = VectorIndex(DIM, self.vectors.path)
            if len(vec_ids):
                fresh.add(vec_ids, vectors)
            fresh.save()
            self.vectors, self._seen = fresh, version
            self.refreshes += 1
            return True

    def add(self, keys: list[str], texts: list[str], num_tokens: list[int], doc_id: str | None = None,
            embeddings: np.ndarray | None = None, save: bool = True) -> list[ChunkRecord]:
        """Record chunks (key = their KV key) and index their embeddings ([n, 384]; computed when None).

        save=False: leave the faiss file for one `save()` at the end of a batch (the table is the truth:
        a crash before it only makes the file stale, and it is rebuilt on open)."""
        if not len(keys) == len(texts) == len(num_tokens):
            raise ValueError("keys, texts and num_tokens must have the same length")
        if embeddings is None:
            embeddings = self.embedder.encode(texts)
        with self._lock:
            records = []
            for k, t, n, e in zip(keys, texts, num_tokens, embeddings, strict=True):
                rec, _, version = self.table.add_versioned(k, t, n, doc_id, e)
                self._advance(version)
                records.append(rec)
            if records:
                self.vectors.add(np.array([r.vec_id for r in records]), embeddings)
                if save:
                    self.vectors.save()
        return records

    def save(self) -> None:
        """Write the faiss file (atomically)."""
        with self._lock:
            self.vectors.save()

    def record(self, key: str, text: str, num_tokens: int, doc_id: str | None = None) -> ChunkRecord:
        """Record a chunk's text without indexing it for search."""
        with self._lock:
            return self.table.add(key, text, num_tokens, doc_id)[0]

    def get(self, key: str) -> ChunkRecord | None:
        return self.table.get(key)

    def delete(self, key: str) -> ChunkRecord | None:
        with self._lock:
            before = self.table.version()
            rec = self.table.delete(key)
            if rec is not None and rec.has_embedding:
                if before == self._seen:
                    self._advance(before + 1)
                self.vectors.remove([rec.vec_id])
                self.vectors.save()
            return rec

    def search(self, query: str, k: int = 4) -> list[Hit]:
        qvec = self.embedder.encode([query])[0]  # [384]
        self.refresh()
        with self._lock:
            found = self.vectors.search(qvec, k)
            rows = self.table.by_vec_ids([i for i, _ in found])
        return [Hit(rows[i].key, rows[i].text, s, rows[i].doc_id) for i, s in found if i in rows]

    def neighbours(self, texts: list[str], vectors: np.ndarray, n: int) -> list[list[str] | None]:
        """For each text (vectors [len(texts), dim]: their embeddings), the texts of its n nearest other
        chunks in the index, nearest first, when the text itself is an indexed chunk (its corpus
        neighbours: the same for every request); None for a text the index does not hold."""
        self.refresh()
        out: list[list[str] | None] = []
        with self._lock:
            for text, vec in zip(texts, vectors, strict=True):
                found = self.vectors.search(vec, n + 1)
                rows = self.table.by_vec_ids([i for i, _ in found])
                hits = [rows[i].text for i, _ in found if i in rows]
                out.append([t for t in hits if t != text][:n] if text in hits else None)
        return out

    def nearby(self, vectors: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """The indexed chunks among the k nearest to any row of vectors [m, dim], each once, in the order found:
        (their texts, their indexed embeddings [len(texts), dim])."""
        self.refresh()
        with self._lock:
            found = dict.fromkeys(i for vec in vectors for i, _ in self.vectors.search(vec, k))
            rows = self.table.by_vec_ids(list(found))
            ids = [i for i in found if i in rows]
            return [rows[i].text for i in ids], self.vectors.vectors(ids)

    def stats(self) -> dict[str, int]:
        return {**self.table.count(), "vectors": len(self.vectors)}

    def close(self) -> None:
        self.table.close()
