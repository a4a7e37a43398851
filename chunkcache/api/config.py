"""Validated server configuration: the server's own settings, with the engine's configuration beside them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chunkcache.blend.prompt import DEFAULT_SYSTEM
from chunkcache.config import ConfigError, EngineConfig
from chunkcache.serving.config import SchedulerConfig

API_KEY_ENV = "CHUNKCACHE_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """engine: model, device, store... (`EngineConfig`); with store.disk False nothing persists and the
        chunk texts and faiss index stay in memory, otherwise they live in engine.store_root.
    max_queue: requests waiting to be admitted by the scheduler; more answer 429.
    max_batch: requests prefilling or decoding at once (continuous batching; 1: one at a time).
    max_batch_tokens: prefill tokens per scheduler step (full/prefix prefills are sliced to it).
    kv_budget_bytes: KV of the requests in flight (prompt + max_tokens each); admission waits beyond it.
    max_body_bytes: larger request bodies answer 413.
    max_new_tokens: the largest max_tokens a request may ask for.
    max_prompt_tokens: the largest prompt (system + chunks + query), capped by the model context.
    max_systems: engine views kept for other system prompts (LRU).
    api_key: bearer token required on every endpoint but /healthz (None: open); default from
        $CHUNKCACHE_API_KEY.
    max_jobs: ingestion jobs waiting or running; more answer 429. keep_jobs: finished jobs remembered.
    job_stale_s: a queued or running job whose replica has not written for this long reads as failed
        (that replica was killed); jobs live in the catalog's database (`jobs_url`).
    blend_special_str: in the OpenAI routes, the separator that ends a chunk inside a message or prompt
        (LMCache's `blend_special_str`, same default; api/openai_layout.py).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 16
    max_batch: int = 16
    max_batch_tokens: int = 512
    kv_budget_bytes: int = 2 << 30
    max_body_bytes: int = 4 << 20
    max_new_tokens: int = 512
    max_prompt_tokens: int = 8192
    max_chunks: int = 64
    max_systems: int = 4
    api_key: str | None = None
    max_jobs: int = 8
    keep_jobs: int = 256
    job_stale_s: float = 60.0
    blend_special_str: str = " # # "
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_body_bytes", "max_new_tokens", "max_prompt_tokens", "max_chunks",
                     "max_systems", "max_jobs", "keep_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.scheduler  # noqa: B018 - validates the scheduler settings, naming the field
        if not self.job_stale_s > 0:
            raise ValueError(f"job_stale_s must be > 0, got {self.job_stale_s}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be blank")
        if not self.blend_special_str.strip():
            raise ValueError(f"blend_special_str must hold non-whitespace text, got {self.blend_special_str!r}")

    @property
    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(self.max_batch, self.max_batch_tokens, self.kv_budget_bytes, self.max_queue)

    @property
    def system(self) -> str:
        """The default system prompt (the engine's, else the prompt builder's default)."""
        return self.engine.system if self.engine.system is not None else DEFAULT_SYSTEM

    @property
    def persistent(self) -> bool:
        return self.engine.store.disk

    @property
    def table_url(self) -> str | None:
        """The SQL database shared by replicas (the catalog's), for chunk texts; None: local files."""
        return self.engine.store.catalog_url

    @property
    def jobs_url(self) -> str | None:
        """Where ingestion jobs live: the catalog's database (SQLite by default); None: in memory."""
        if self.engine.store.catalog_url or self.persistent:
            return self.engine.store_config().resolved_catalog_url
        return None

    @classmethod
    def from_env(cls, **kw: object) -> "ServerConfig":
        """kw overrides; api_key falls back to $CHUNKCACHE_API_KEY."""
        if kw.get("api_key") is None and os.environ.get(API_KEY_ENV):
            kw["api_key"] = os.environ[API_KEY_ENV]
        return cls(**kw)  # type: ignore[arg-type]

    @classmethod
    def from_layers(cls, engine: EngineConfig, table: Mapping[str, Any], flags: Mapping[str, Any]) -> "ServerConfig":
        """flags > $CHUNKCACHE_API_KEY > the config file's [server] table > defaults; errors name the key."""
        known = {f.name for f in dataclasses.fields(cls)} - {"engine"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"server.{unknown[0]}: unknown key in the [server] table "
                              f"(known: {', '.join(sorted(known))})")
        kw = {**table, **{k: v for k, v in flags.items() if v is not None}}
        if "api_key" not in flags and os.environ.get(API_KEY_ENV):
            kw["api_key"] = os.environ[API_KEY_ENV]
        try:
            return cls(engine=engine, **kw)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"server.{err}") from None
