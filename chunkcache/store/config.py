"""Validated configuration of the chunk store and its tiers. Torch-free.

Tiers are listed fastest first and their kinds must follow the order gpu < cpu < disk < remote.
A GPU tier in a config is skipped (with a log line) where CUDA is absent, so one config serves
every machine.

URLs that may carry a password (the Redis URL, the catalog URL) are held as pydantic `SecretStr`:
`repr` and `str` show `**********`. `secret_value` unwraps one where a client connects; every URL
that is printed, logged, returned or put in a fault goes through `redact_url` (userinfo password
and a `password=` query parameter become `***`), and error texts of clients through `scrub`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

TIER_ORDER = ("gpu", "cpu", "disk", "remote")
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def secret_value(url: str | SecretStr | None) -> str | None:
    """The real URL (for the client that connects with it; never print the result)."""
    return url.get_secret_value() if isinstance(url, SecretStr) else url


def _passwords(url: str) -> set[str]:
    """url's password and `password=` query values, as written and percent-decoded."""
    try:
        parts = urlsplit(url)
        found = {parts.password or ""} | set(re.findall(r"(?:^|&)password=([^&]*)", parts.query, re.IGNORECASE))
    except ValueError:
        return set()
    return {form for p in found if p for form in (p, unquote(p))}


def redact_url(url: str | SecretStr | None) -> str:
    """The URL with its password replaced by `***`: safe to print, log and return."""
    raw = secret_value(url)
    if raw is None:
        return "None"
    try:
        parts = urlsplit(raw)
        out = raw
        if parts.password is not None:
            out = out.replace("//" + parts.netloc, f"//{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}", 1)
        if parts.query:
            head, _, query = out.rpartition("?")
            out = f"{head}?{_QUERY_PASSWORD.sub(lambda m: m.group(1) + '***', query)}"
        return out
    except ValueError:
        return "<unparseable url>"


def scrub(text: str, url: str | SecretStr | None) -> str:
    """text with every occurrence of url's password replaced by `***` (for error texts of clients)."""
    for secret in sorted(_passwords(secret_value(url) or ""), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def as_secret(url: str | SecretStr | None) -> SecretStr | None:
    return url if url is None or isinstance(url, SecretStr) else SecretStr(url)

POLICIES = ("lru", "cost")
CODECS = ("none", "int8")
GiB = 1 << 30


@dataclass(frozen=True)
class TierConfig:
    """One tier.

    kind: "gpu" | "cpu" | "disk" | "remote" (Redis / Valkey).
    budget_bytes: bytes of KV this process keeps in the tier; None = unbounded. For the remote tier
        the budget is the server's business (run it with `maxmemory` and `maxmemory-policy
        allkeys-lru`); a budget given here is rejected because several nodes share the server.
    policy: eviction policy, "lru" or "cost" (PGDSF-like: frequency x recompute cost / size).
    codec: "none" or "int8" (per-channel int8 of K and V); only for disk and remote tiers.
    write_through: every put also lands here (durability, sharing); otherwise entries arrive here
        only when a faster tier evicts them (write-back) or a slower tier's hit is promoted.
    path: disk tier directory (default: <cache_dir>/chunks).
    url: remote tier URL, e.g. "redis://:password@127.0.0.1:6379/0" (a str is kept as a SecretStr).
    key_prefix: prefix of every Redis key of this store (replicas sharing entries use the same one).
    ttl_s: Redis expiry of each entry in seconds (None: kept until the server evicts it).
    timeout_s, retry_after_s: a Redis connection error or timeout marks the server down for
        retry_after_s; meanwhile its reads are misses and its writes fail fast.
    """

    kind: str
    budget_bytes: int | None = None
    policy: str = "lru"
    codec: str = "none"
    write_through: bool = False
    path: str | None = None
    url: SecretStr | None = None
    key_prefix: str = "chunkcache:kv:"
    ttl_s: int | None = None
    timeout_s: float = 2.0
    retry_after_s: float = 5.0
    pin_memory: bool | None = None
    fsync: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", as_secret(self.url))
        if self.kind not in TIER_ORDER:
            raise ValueError(f"tier kind must be one of {TIER_ORDER}, got {self.kind!r}")
        if self.budget_bytes is not None and self.budget_bytes < 0:
            raise ValueError(f"{self.kind} tier budget_bytes must be >= 0, got {self.budget_bytes}")
        if self.policy not in POLICIES:
            raise ValueError(f"eviction policy must be one of {POLICIES}, got {self.policy!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if self.codec != "none" and self.kind in ("gpu", "cpu"):
            raise ValueError(f"codec {self.codec!r} is for disk and remote tiers, not {self.kind}")
        if self.kind == "remote":
            if not self.url:
                raise ValueError("remote tier needs url, e.g. redis://127.0.0.1:6379/0")
            if self.budget_bytes is not None:
                raise ValueError("remote tier budget is set on the server (maxmemory), not here")
        if self.kind != "remote" and self.url:
            raise ValueError(f"url is only for the remote tier, not {self.kind}")
        if self.kind != "disk" and self.path:
            raise ValueError(f"path is only for the disk tier, not {self.kind}")
        if self.pin_memory and self.kind != "cpu":
            raise ValueError("pin_memory is only for the cpu tier")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {self.ttl_s}")
        if self.timeout_s <= 0 or self.retry_after_s < 0:
            raise ValueError("timeout_s must be > 0 and retry_after_s >= 0")

    @property
    def persistent(self) -> bool:
        return self.kind in ("disk", "remote")


def default_cache_dir() -> str:
    """$CHUNKCACHE_DIR, else $XDG_CACHE_HOME/chunkcache, else ~/.cache/chunkcache."""
    if os.environ.get("CHUNKCACHE_DIR"):
        return os.environ["CHUNKCACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "chunkcache")


@dataclass(frozen=True)
class StoreConfig:
    """The whole store.

    tiers: fastest first. The default is a single 4 GiB CPU tier: no files, no catalog, cheap.
    cache_dir: where the disk tier and the default SQLite catalog live.
    catalog_url: SQLAlchemy URL ("postgresql+psycopg2://user@host:port/db"), kept as a SecretStr; None = SQLite file
        <cache_dir>/catalog.sqlite, opened only when a disk or remote tier exists (or catalog=True).
    catalog: force the catalog on (True) or off (False); None = auto as above.
    prefetch_depth: layers get_layers reads ahead in its background thread (>= 1).
    promote_on_hit: copy a slower tier's hit into the fastest tier.
    write_queue: once a memory tier holds a new entry, its writes to disk/remote tiers and its catalog
        rows go to a background writer with at most this many queued chunks (bounded memory); so do
        demotions of entries evicted from a memory tier. Flushed by `ChunkStore.flush` and `close`.
        0 = write inline (the request path then waits on every slow tier).
    write_wait_s: how long a put waits for room in a full queue (measured in stats()["writer"]); after
        that its slow-tier writes are dropped and counted as write_queue_full (the entry stays in the
        memory tier). A demotion, queued under the store lock, never waits.
    """

    tiers: tuple[TierConfig, ...] = field(default_factory=lambda: (TierConfig("cpu", budget_bytes=4 * GiB),))
    cache_dir: str | None = None
    catalog_url: SecretStr | None = None
    catalog: bool | None = None
    prefetch_depth: int = 2
    promote_on_hit: bool = True
    max_recent_faults: int = 100
    catalog_flush_every: int = 256
    write_queue: int = 64
    write_wait_s: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalog_url", as_secret(self.catalog_url))
        if isinstance(self.tiers, list):
            object.__setattr__(self, "tiers", tuple(self.tiers))
        if not self.tiers:
            raise ValueError("StoreConfig needs at least one tier")
        kinds = [t.kind for t in self.tiers]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each tier kind may appear once, got {kinds}")
        order = [TIER_ORDER.index(k) for k in kinds]
        if order != sorted(order):
            raise ValueError(f"tiers must be ordered fastest first ({' < '.join(TIER_ORDER)}), got {kinds}")
        if self.prefetch_depth < 1:
            raise ValueError(f"prefetch_depth must be >= 1, got {self.prefetch_depth}")
        if self.write_queue < 0 or self.write_wait_s < 0:
            raise ValueError(f"write_queue and write_wait_s must be >= 0, got {self.write_queue}, {self.write_wait_s}")
        if self.max_recent_faults < 0 or self.catalog_flush_every < 1:
            raise ValueError("max_recent_faults must be >= 0 and catalog_flush_every >= 1")

    @property
    def resolved_cache_dir(self) -> str:
        return self.cache_dir or default_cache_dir()

    @property
    def wants_catalog(self) -> bool:
        if self.catalog is not None:
            return self.catalog
        return self.catalog_url is not None or any(t.persistent for t in self.tiers)

    @property
    def resolved_catalog_url(self) -> str:
        """The real URL, password included: for the client only (print `redact_url` of it)."""
        if self.catalog_url:
            return self.catalog_url.get_secret_value()
        return "sqlite:///" + str(Path(self.resolved_cache_dir) / "catalog.sqlite")

    @classmethod
    def memory_only(cls, budget_bytes: int = 4 * GiB, policy: str = "lru") -> "StoreConfig":
        """A plain in-process CPU store (the blender's default)."""
        return cls(tiers=(TierConfig("cpu", budget_bytes=budget_bytes, policy=policy),), catalog=False)
