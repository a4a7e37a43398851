"""The engine configuration: model, device, dtype, kernels and the store, validated once. Torch-free.

`EngineConfig` is what every entry point takes (Python API, CLI, server, agents, LangChain). It maps
onto the store's own dataclass config (`StoreConfig` / `TierConfig`) through `store_config()`.
Loading it from a file, the environment and flags is `chunkcache.config.loading`; probing the
device and the URLs is `chunkcache.config.checks`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, ByteSize, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, SecretStr,
                      field_validator, model_validator)
from pydantic_settings import BaseSettings, SettingsConfigDict

from chunkcache.store.config import GiB, StoreConfig, TierConfig, default_cache_dir, redact_url

ENV_PREFIX = "CHUNKCACHE_"
DTYPES = ("float32", "bfloat16", "float16")
KERNELS = ("auto", "torch", "cpp", "triton")


def triton_choice(kernels: str) -> bool | None:
    """A `kernels` value as the `use_triton` argument of the ops with torch and Triton versions only (None: auto;
    cpp forces the C++ attention and leaves the other ops on their torch references)."""
    return {"auto": None, "torch": False, "cpp": False, "triton": True}[kernels]
DEFAULT_CPU_BYTES = 1 * GiB
Bytes = Annotated[ByteSize, Field(ge=0)]
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


class StoreSettings(BaseModel):
    """Where chunk KV lives. Tiers, fastest first: GPU (gpu_bytes > 0, CUDA only), CPU (always, bounded
    by cpu_bytes), disk (unless disk=False), Redis (when redis_url is set). Byte sizes take ints or
    strings such as "512MiB" / "4GB". redis_url and catalog_url may hold passwords: they are `SecretStr`
    (repr and errors never show them; `.get_secret_value()` where a client connects). redis_ttl_s,
    redis_key_prefix and redis_retry_after_s are the remote tier's expiry, key namespace and breaker."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    gpu_bytes: Bytes = ByteSize(0)
    cpu_bytes: Bytes = ByteSize(DEFAULT_CPU_BYTES)
    disk: bool = True
    disk_dir: str | None = None  # default <cache_dir>/store/chunks
    disk_bytes: Bytes | None = None  # None: unbounded
    redis_url: SecretStr | None = None
    catalog_url: SecretStr | None = None  # None: SQLite <cache_dir>/store/catalog.sqlite when a tier persists
    disk_codec: Literal["none", "int8"] = "none"
    redis_codec: Literal["none", "int8"] = "none"
    eviction: Literal["lru", "cost"] = "lru"
    write: Literal["through", "back"] = "through"
    timeout_s: PositiveFloat = 2.0  # Redis operations and the start-up reachability probes
    redis_ttl_s: PositiveInt | None = None  # None: entries stay until the server evicts them
    redis_key_prefix: str = Field("chunkcache:kv:", min_length=1)
    redis_retry_after_s: NonNegativeFloat = 5.0  # a Redis connection error marks it down this long

    @field_validator("gpu_bytes", "cpu_bytes", "disk_bytes", mode="before")
    @classmethod
    def _non_negative(cls, v: object) -> object:
        if (isinstance(v, (int, float)) and v < 0) or (isinstance(v, str) and v.strip().startswith("-")):
            raise ValueError(f"a byte budget must be >= 0, got {v!r}")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {redact_url(v)!r}")
        return v

    @property
    def persistent(self) -> bool:
        return self.disk or self.redis_url is not None

    def store_config(self, root: str | Path) -> StoreConfig:
        """The store's own config; root holds the disk tier and the default SQLite catalog."""
        through = self.write == "through"
        tiers = []
        if self.gpu_bytes:
            tiers.append(TierConfig("gpu", budget_bytes=int(self.gpu_bytes), policy=self.eviction))
        tiers.append(TierConfig("cpu", budget_bytes=int(self.cpu_bytes), policy=self.eviction))
        if self.disk:
            tiers.append(TierConfig("disk", budget_bytes=None if self.disk_bytes is None else int(self.disk_bytes),
                                    policy=self.eviction, codec=self.disk_codec, write_through=through,
                                    path=None if self.disk_dir is None else str(Path(self.disk_dir).expanduser())))
        if self.redis_url:
            tiers.append(TierConfig("remote", url=self.redis_url, codec=self.redis_codec, write_through=through,
                                    timeout_s=self.timeout_s, ttl_s=self.redis_ttl_s, key_prefix=self.redis_key_prefix,
                                    retry_after_s=self.redis_retry_after_s))
        return StoreConfig(tiers=tuple(tiers), cache_dir=str(root), catalog_url=self.catalog_url,
                           catalog=None if self.persistent or self.catalog_url else False)


class EngineConfig(BaseSettings):
    """One engine: model, device, dtype, threads, system prompt, kernels, cache dir and store.

    dtype None resolves to float32 on the CPU and bfloat16 on CUDA. linear_dtype "bfloat16" computes an fp32
    model's decoder linear layers in bf16 where that measures faster (runner/linear.py; it changes answers, by
    BENCHMARKS.md's measure); None: the model's dtype. decode_linear_dtype "float32" keeps them fp32 in the decode
    steps and the decode-time correction (bf16 then speeds the prefill only); None: as linear_dtype.
    attention_dtype "bfloat16" gives the prefill's C++ attention bf16 products (AVX512-BF16 CPUs, where measured
    faster; fp32 accumulation; it changes answers); None: the model's dtype. system None is
    the prompt builder's default. kernels: auto (the attention implementation measured fastest on this machine for
    this model: torch, the C++ kernel on the CPU, Triton on CUDA; the other ops Triton on CUDA), or one forced: torch
    (the torch references only), cpp (the C++ attention; fp32 CPU), triton. store="memory" / "disk" is
    shorthand for a store without / with the disk tier. Constructing it reads no environment: use
    `load_config` for the file / env / flag layers.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      frozen=True, hide_input_in_errors=True)

    model_path: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    linear_dtype: Literal["float32", "bfloat16"] | None = None
    decode_linear_dtype: Literal["float32", "bfloat16"] | None = None
    attention_dtype: Literal["float32", "bfloat16"] | None = None
    threads: PositiveInt | None = None
    system: str | None = None
    kernels: Literal["auto", "torch", "cpp", "triton"] = "auto"
    cache_dir: str | None = None  # default $CHUNKCACHE_DIR, else ~/.cache/chunkcache
    store: StoreSettings = StoreSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings,  # type: ignore[no-untyped-def]
                                   env_settings, dotenv_settings, file_secret_settings):
        return (init_settings,)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"must be cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("store", mode="before")
    @classmethod
    def _store_shorthand(cls, v: object) -> object:
        if isinstance(v, str):
            if v not in ("disk", "memory"):
                raise ValueError(f"must be 'disk', 'memory' or a table of store settings, got {v!r}")
            return {"disk": v == "disk"}
        return v

    @model_validator(mode="after")
    def _gpu_tier_needs_cuda_device(self) -> "EngineConfig":
        if self.store.gpu_bytes and not self.device.startswith("cuda"):
            raise ValueError(f"store.gpu_bytes: a GPU tier needs a cuda device, got device={self.device!r}")
        return self

    @model_validator(mode="after")
    def _linear_dtype_needs_fp32(self) -> "EngineConfig":
        if self.linear_dtype == "bfloat16" and self.resolved_dtype != "float32":
            raise ValueError(f"linear_dtype: 'bfloat16' computes an fp32 model's linear layers in bfloat16; dtype is "
                             f"{self.resolved_dtype!r} (leave linear_dtype unset)")
        if self.decode_linear_dtype == "bfloat16" and self.linear_dtype != "bfloat16":
            raise ValueError("decode_linear_dtype: 'bfloat16' only with linear_dtype 'bfloat16' (the split "
                             "supported is bf16 prefill, fp32 decode)")
        if self.attention_dtype == "bfloat16" and self.resolved_dtype != "float32":
            raise ValueError(f"attention_dtype: 'bfloat16' gives an fp32 model's CPU attention bf16 products; dtype "
                             f"is {self.resolved_dtype!r} (leave attention_dtype unset)")
        return self

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")

    @property
    def use_triton(self) -> bool | None:
        """The kernel choice as the kernels' `use_triton` argument (None: auto)."""
        return triton_choice(self.kernels)

    @property
    def store_root(self) -> Path:
        """Disk tier, SQLite catalog, chunk texts and faiss index live here."""
        return Path(self.cache_dir or default_cache_dir()).expanduser() / "store"

    @property
    def profile_root(self) -> Path:
        """Per-model measurements (calibrated ratio, qcfuse's critical layers): blend/model_profile.py."""
        return Path(self.cache_dir or default_cache_dir()).expanduser() / "profiles"

    def store_config(self) -> StoreConfig:
        return self.store.store_config(self.store_root)
