"""The embedder's LRU of vectors: a text seen before is not encoded again, and its vector is the one a fresh
encode gives (mode fusion embeds every request's chunks)."""

from __future__ import annotations

import numpy as np
import pytest

from chunkcache.retrieval.embedder import Embedder

A, B, C = ("The Nile flows north into the Mediterranean.", "Kilimanjaro is the highest mountain in Africa.",
           "Honey bees dance to show where flowers are.")


def test_repeated_texts_come_from_the_cache_with_the_same_vectors() -> None:
    cached, fresh = Embedder(cache_size=2), Embedder(cache_size=0)
    fresh._model = cached.model  # one model load for both
    seen: list[str] = []
    encode = cached.model.encode

    def counting(texts, **kw):  # type: ignore[no-untyped-def]
        seen.extend(texts)
        return encode(texts, **kw)

    cached._model = type("Counting", (), {"encode": staticmethod(counting)})()
    first = cached.encode([A, B, A])
    assert seen == [A, B]  # a text repeated within a call is encoded once
    second = cached.encode([B, C, B])
    assert seen == [A, B, C]
    np.testing.assert_allclose(second, fresh.encode([B, C, B]), atol=1e-6)
    np.testing.assert_allclose(first, fresh.encode([A, B, A]), atol=1e-6)
    cached.encode([A])  # evicted (cache of 2: B, C), so encoded again
    assert seen == [A, B, C, A]
    assert cached.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="cache_size"):
        Embedder(cache_size=-1)
