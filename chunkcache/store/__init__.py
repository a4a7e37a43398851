"""Tiered chunk KV store: see chunk_store.ChunkStore and config.StoreConfig."""
