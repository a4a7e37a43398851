"""A faiss inner-product index over normalised embeddings, keyed by int64 vector ids, persisted to a file."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)


class VectorIndex:
    """IndexIDMap2(IndexFlatIP): exact search, ids chosen by the caller (ChunkTable.vec_id).

    path None: in memory only. save() writes atomically (temp file + rename).
    """

    def __init__(self, dim: int, path: str | Path | None = None) -> None:
        self.dim = dim
        self.path = Path(path) if path is not None else None
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def open(cls, dim: int, path: str | Path | None, vec_ids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        """Load the file when it matches the given (vec_ids, vectors) ground truth; else rebuild from them."""
        idx = cls(dim, path)
        if idx.path is not None and idx.path.exists():
            try:
                loaded = faiss.read_index(str(idx.path))
                if loaded.d == dim and loaded.ntotal == len(vec_ids):
                    idx.index = loaded
                    return idx
                log.warning("vector index %s is stale (%d vectors, table has %d): rebuilding",
                            idx.path, loaded.ntotal, len(vec_ids))
            except RuntimeError as err:
                log.warning("vector index %s unreadable (%s): rebuilding", idx.path, err)
        if len(vec_ids):
            idx.add(vec_ids, vectors)
        idx.save()
        return idx

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vec_ids: np.ndarray, vectors: np.ndarray) -> None:
        """vec_ids [n] int64, vectors [n, dim] float32 (normalised)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)  # [n, dim]
        ids = np.asarray(vec_ids, dtype=np.int64)
        self.index.remove_ids(ids)  # re-adding an id replaces its vector
        self.index.add_with_ids(vectors, ids)

    def remove(self, vec_ids: list[int]) -> int:
        return int(self.index.remove_ids(np.asarray(vec_ids, dtype=np.int64)))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """query [dim] -> up to k (vec_id, cosine score), best first."""
        if len(self) == 0 or k < 1:
            return []
        scores, ids = self.index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim),
                                        min(k, len(self)))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def vectors(self, vec_ids: list[int]) -> np.ndarray:
        """The stored vectors of vec_ids (each present): [len(vec_ids), dim]."""
        out = np.zeros((len(vec_ids), self.dim), np.float32)  # [n, dim]
        for row, i in enumerate(vec_ids):
            out[row] = self.index.reconstruct(int(i))
        return out

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
