"""ChunkIndex.neighbours: an indexed chunk's nearest other chunks of the corpus (fusion's precompute context),
None for a text the index does not hold."""

from __future__ import annotations

import numpy as np

from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.embedder import DIM


class NoEmbedder:
    def encode(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("the embeddings are given")


def _unit(*coords: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(coords)] = coords
    return v / np.linalg.norm(v)


def test_neighbours_of_indexed_chunks_come_from_the_corpus():
    index = ChunkIndex(None, embedder=NoEmbedder())
    texts = ["alpha", "alpha-ish", "beta", "gamma"]
    vecs = np.stack([_unit(1, 0, 0), _unit(0.9, 0.1, 0), _unit(0.5, 0.5, 0), _unit(0.1, 0.5, 1)])  # [4, DIM]
    index.add([f"k{i}" for i in range(4)], texts, [3, 3, 3, 3], embeddings=vecs)
    query = np.stack([vecs[0], _unit(0.95, 0.05, 0), vecs[3]])  # alpha (indexed), a new text, gamma (indexed)
    near = index.neighbours(["alpha", "not ingested", "gamma"], query, 2)
    assert near[0] == ["alpha-ish", "beta"]  # nearest first, itself left out
    assert near[1] is None  # not in the corpus: the caller falls back to the request's own chunks
    assert near[2] == ["beta", "alpha-ish"]  # cosine 0.38, 0.14 (alpha 0.09)
    assert index.neighbours(["alpha"], vecs[:1], 0) == [[]]
