"""Start-up checks of an `EngineConfig` against this machine: the device exists, the kernels can run,
the Redis server and the catalog database answer. Run before any model loads; each failure is a
`ConfigError` naming the field. torch, redis and SQLAlchemy are imported only here, lazily."""

from __future__ import annotations

import os

from chunkcache.config.loading import ConfigError
from chunkcache.config.settings import EngineConfig
from chunkcache.store.config import redact_url, scrub


def check_device(cfg: EngineConfig) -> None:
    if cfg.device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device: {cfg.device!r} is not present (torch.cuda.is_available() is False on this "
                          f"machine; use device = \"cpu\")")
    index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device: {cfg.device!r} is not present (this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s))")


def check_kernels(cfg: EngineConfig) -> None:
    if cfg.kernels == "cpp":
        if cfg.device != "cpu" or cfg.resolved_dtype != "float32":
            raise ConfigError(f"kernels: 'cpp' is the fp32 CPU attention kernel; device={cfg.device!r}, "
                              f"dtype={cfg.resolved_dtype!r} need kernels = auto, torch or triton")
        from chunkcache.kernels._cpp import build_error, load

        if load("sparse_attention_cpu") is None:
            raise ConfigError(f"kernels: 'cpp' but the C++ kernel does not build here: "
                              f"{build_error('sparse_attention_cpu')}")
        return
    if cfg.kernels != "triton":
        return
    from chunkcache.kernels._triton import interpreting, triton_available

    if not triton_available():
        raise ConfigError("kernels: 'triton' needs the triton package (pip install triton)")
    if cfg.device == "cpu" and not interpreting():
        raise ConfigError("kernels: 'triton' on device cpu needs TRITON_INTERPRET=1 (the Triton CPU interpreter)")


def check_redis(cfg: EngineConfig) -> None:
    url = cfg.store.redis_url
    if url is None:
        return
    import redis

    t = cfg.store.timeout_s
    try:
        client = redis.Redis.from_url(url.get_secret_value(), socket_connect_timeout=t, socket_timeout=t)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as err:
        raise ConfigError(f"store.redis_url: cannot reach {redact_url(url)} within {t:g}s ({scrub(str(err), url)})") \
            from None


def check_catalog(cfg: EngineConfig) -> None:
    store = cfg.store_config()
    if not store.wants_catalog:
        return
    url = store.resolved_catalog_url
    if url.startswith("sqlite"):
        folder = os.path.dirname(url.split("///", 1)[-1]) or "."
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing) or "."
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
            raise ConfigError(f"store.catalog_url: cannot create the SQLite catalog in {folder} ({existing} is not "
                              f"a writable folder)")
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    t = cfg.store.timeout_s
    args = {"connect_timeout": max(1, round(t))} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, connect_args=args, pool_pre_ping=True)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except ImportError as err:  # the dialect's DBAPI driver (psycopg for postgresql://) is not installed
        raise ConfigError(f"store.catalog_url: the driver of {url.split('://', 1)[0]}:// is not installed ({err}); "
                          f"PostgreSQL: pip install 'chunkcache[postgres]' (psycopg 3), or name an installed "
                          f"driver, e.g. postgresql+psycopg2://") from None
    except (ArgumentError, NoSuchModuleError) as err:
        raise ConfigError(f"store.catalog_url: not a usable SQLAlchemy URL ({scrub(str(err), url)})") from None
    except SQLAlchemyError as err:
        raise ConfigError(f"store.catalog_url: cannot connect to {redact_url(url)} within {t:g}s "
                          f"({scrub(str(err).splitlines()[0], url)})") from None


def check_config(cfg: EngineConfig) -> EngineConfig:
    """Every check, cheapest first; returns cfg so calls chain."""
    check_device(cfg)
    check_kernels(cfg)
    if cfg.model_path is not None and not os.path.isfile(os.path.join(os.path.expanduser(cfg.model_path),
                                                                      "config.json")):
        raise ConfigError(f"model_path: {cfg.model_path} is not a Hugging Face model directory (no config.json)")
    check_redis(cfg)
    check_catalog(cfg)
    return cfg
