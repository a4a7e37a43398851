"""Ready-made stores for common setups."""

from __future__ import annotations

from pathlib import Path

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


def open_store(cache_dir: str | Path, **kw: object) -> ChunkStore:
    """CPU tier (1 GiB) + disk tier under cache_dir with the SQLite catalog: the common setup."""
    cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 30), TierConfig("disk", write_through=True)),
                      cache_dir=str(cache_dir), **kw)  # type: ignore[arg-type]
    return ChunkStore(cfg)
