"""The engine's command-line flags, shared by every `chunkcache` command. Torch-free.

`engine_flags()` is an argparse parent parser: its flags are accepted before or after the command
(`chunkcache --device cpu demo` and `chunkcache demo --device cpu`), and a flag not given stays out
of the namespace, so it does not override the environment or the file. `flag_layer(args)` turns
the given ones into the nested dict `load_config` takes as its top layer.
"""

from __future__ import annotations

import argparse
from typing import Any

from chunkcache.config.loading import load_config
from chunkcache.config.settings import DTYPES, KERNELS, EngineConfig

S = argparse.SUPPRESS
# dest -> (path in EngineConfig, flag, help)
FLAGS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "model": (("model_path",), "--model", "local HF model directory (default: bundled SmolLM2-135M-Instruct)"),
    "device": (("device",), "--device", "cpu, cuda or cuda:N (default cpu)"),
    "dtype": (("dtype",), "--dtype", f"{' | '.join(DTYPES)} (default float32 on cpu, bfloat16 on cuda)"),
    "linear_dtype": (("linear_dtype",), "--linear-dtype",
                     "bfloat16: an fp32 model's linear layers in bf16, where measured faster (changes answers)"),
    "decode_linear_dtype": (("decode_linear_dtype",), "--decode-linear-dtype",
                            "float32: with --linear-dtype bfloat16, decode (and its correction) in fp32"),
    "attention_dtype": (("attention_dtype",), "--attention-dtype",
                        "bfloat16: an fp32 model's prefill attention with bf16 products on the CPU, where measured "
                        "faster (changes answers)"),
    "threads": (("threads",), "--threads", "torch CPU threads (default: torch's choice)"),
    "kernels": (("kernels",), "--kernels",
                f"{' | '.join(KERNELS)} (default auto: the attention measured fastest here)"),
    "cache_dir": (("cache_dir",), "--cache-dir", "cache root; the store lives in <cache-dir>/store "
                                                 "(default $CHUNKCACHE_DIR or ~/.cache/chunkcache)"),
    "cpu_bytes": (("store", "cpu_bytes"), "--cpu-bytes", "CPU tier budget, e.g. 1GiB (default 1GiB)"),
    "gpu_bytes": (("store", "gpu_bytes"), "--gpu-bytes", "GPU tier budget (default 0: no GPU tier; cuda only)"),
    "disk_dir": (("store", "disk_dir"), "--disk-dir", "disk tier folder (default <cache-dir>/store/chunks)"),
    "redis_url": (("store", "redis_url"), "--redis-url", "Redis/Valkey remote tier, e.g. redis://host:6379/0"),
    "catalog_url": (("store", "catalog_url"), "--catalog-url",
                    "catalog database URL, e.g. postgresql://user@host/db (default SQLite in the store folder)"),
    "eviction": (("store", "eviction"), "--eviction", "lru | cost (default lru)"),
    "write": (("store", "write"), "--write", "through | back: slow tiers get every put, or only evictions "
                                             "(default through)"),
}


def engine_flags() -> argparse.ArgumentParser:
    """A parent parser with --config and every engine flag (values are validated by EngineConfig)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("engine configuration (flags > CHUNKCACHE_* env > --config file > defaults)")
    g.add_argument("--config", default=S, metavar="FILE", help="TOML (or YAML) configuration file")
    for dest, (_, flag, text) in FLAGS.items():
        g.add_argument(flag, dest=dest, default=S, help=text)
    g.add_argument("--store", default=S, choices=("disk", "memory"),
                   help="disk: with the disk tier (default); memory: no disk tier, nothing written locally")
    g.add_argument("--kv-codec", default=S, choices=("none", "int8"),
                   help="codec of the slow tiers (disk and Redis), default none")
    return p


def flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The engine flags given on the command line, as a nested dict for load_config."""
    out: dict[str, Any] = {}
    given = vars(args)
    for dest, (path, _, _) in FLAGS.items():
        if dest in given and given[dest] is not None:
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = given[dest]
    if "store" in given:
        out.setdefault("store", {})["disk"] = given["store"] == "disk"
    if "kv_codec" in given:
        out.setdefault("store", {}).update(disk_codec=given["kv_codec"], redis_codec=given["kv_codec"])
    return out


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    """load_config over --config, the environment and the flags given; raises ConfigError."""
    return load_config(getattr(args, "config", None), flag_layer(args))
