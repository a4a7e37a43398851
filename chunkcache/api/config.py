"""Validated server configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass

from chunkcache.blend.prompt import DEFAULT_SYSTEM


@dataclass(frozen=True)
class ServerConfig:
    """model_path: local HF directory (None: bundled SmolLM2-135M-Instruct).
    store: "disk" (CPU + disk tiers, catalog, chunk texts and faiss index under cache_dir/store) or
        "memory" (nothing persists).
    max_queue: requests waiting for the model worker beyond the one running; more answer 429.
    max_body_bytes: larger request bodies answer 413.
    max_new_tokens: the largest max_tokens a request may ask for.
    max_prompt_tokens: the largest prompt (system + chunks + query), capped by the model context.
    api_key: bearer token required on every endpoint but /healthz (None: open); default from
        $CHUNKCACHE_API_KEY.
    max_jobs: ingestion jobs waiting or running; more answer 429.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_path: str | None = None
    cache_dir: str | None = None
    store: str = "disk"
    num_threads: int | None = None
    system: str = DEFAULT_SYSTEM
    max_queue: int = 16
    max_body_bytes: int = 4 << 20
    max_new_tokens: int = 512
    max_prompt_tokens: int = 8192
    max_chunks: int = 64
    max_systems: int = 4
    api_key: str | None = None
    max_jobs: int = 8
    keep_jobs: int = 256

    def __post_init__(self) -> None:
        if self.store not in ("disk", "memory"):
            raise ValueError(f"store must be 'disk' or 'memory', got {self.store!r}")
        for name in ("max_queue", "max_body_bytes", "max_new_tokens", "max_prompt_tokens", "max_chunks",
                     "max_systems", "max_jobs", "keep_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be blank")

    @classmethod
    def from_env(cls, **kw: object) -> "ServerConfig":
        """kw overrides; api_key falls back to $CHUNKCACHE_API_KEY."""
        if kw.get("api_key") is None and os.environ.get("CHUNKCACHE_API_KEY"):
            kw["api_key"] = os.environ["CHUNKCACHE_API_KEY"]
        return cls(**kw)  # type: ignore[arg-type]
