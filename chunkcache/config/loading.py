"""Build an `EngineConfig` from layers: flags > environment > file > defaults. Torch-free.

File: TOML (`.toml`, read with tomllib) or YAML (`.yaml` / `.yml`, needs PyYAML). Engine keys at the
top level, store keys in a `[store]` table, server settings in a `[server]` table (read by
`chunkcache serve` only). Environment: `CHUNKCACHE_<FIELD>` for engine fields and
`CHUNKCACHE_STORE__<FIELD>` for store fields (case-insensitive). An unknown key in the file or an
unknown `CHUNKCACHE_*` variable is an error naming it; so is any bad value, named by its field.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource
from pydantic_settings.exceptions import SettingsError

from chunkcache.config.settings import ENV_PREFIX, EngineConfig

SERVER_TABLE = "server"
# CHUNKCACHE_* variables that are not engine settings: the cache root read by default_cache_dir, the C++
# kernels' build cache (kernels/_cpp.py), the server's API key (or its file), and the test harness's servers.
OTHER_ENV = frozenset({"CHUNKCACHE_DIR", "CHUNKCACHE_API_KEY", "CHUNKCACHE_API_KEY_FILE", "CHUNKCACHE_REDIS_SERVER",
                       "CHUNKCACHE_PG_BIN", "CHUNKCACHE_PG_USER", "CHUNKCACHE_REQUIRE_LMCACHE", "CHUNKCACHE_WHEELS",
                       "CHUNKCACHE_KERNEL_CACHE"})  # not engine settings: cache roots, the server key, test servers


class ConfigError(ValueError):
    """A configuration the engine refuses; the message names the field (or key / variable) and why."""


def read_file(path: str | Path) -> dict[str, Any]:
    """The file's tables as a dict (TOML, or YAML by suffix)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {p}: no such file")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
    except Exception as err:  # tomllib.TOMLDecodeError, yaml.YAMLError: the parser's own message
        raise ConfigError(f"config file {p}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a table of settings at the top level")
    return data


def _unknown_keys(data: Mapping[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            out.append(prefix + key)
            continue
        sub = field.annotation
        if isinstance(value, Mapping) and isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _unknown_keys(value, sub, f"{prefix}{key}.")
    return out


def _check_known(data: Mapping[str, Any], where: str) -> None:
    unknown = _unknown_keys(data, EngineConfig)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key in {where} (known: {', '.join(EngineConfig.model_fields)}; "
                          f"store keys: {', '.join(EngineConfig.model_fields['store'].annotation.model_fields)})")


STORE_SHORTHAND = ("disk", "memory")


class _EnvSource(EnvSettingsSource):
    """pydantic's env source, less CHUNKCACHE_STORE when it holds the disk / memory shorthand (which pydantic
    would parse as JSON): env_layer expands that one as the file and --store do."""

    def _load_env_vars(self):  # type: ignore[no-untyped-def]
        env = super()._load_env_vars()
        return {k: v for k, v in env.items() if not (k.upper() == f"{ENV_PREFIX}STORE" and v in STORE_SHORTHAND)}


def _store_shorthand() -> dict[str, Any]:
    """CHUNKCACHE_STORE=disk|memory as {"store": {"disk": ...}}; another non-JSON value is an error naming it."""
    for name, value in os.environ.items():
        if name.upper() != f"{ENV_PREFIX}STORE":
            continue
        if value in STORE_SHORTHAND:
            return {"store": {"disk": value == "disk"}}
        if not value.lstrip().startswith("{"):
            raise ConfigError(f"{name}: must be 'disk', 'memory' or a JSON table of store settings, got {value!r}")
    return {}


def env_layer() -> dict[str, Any]:
    """The CHUNKCACHE_* settings of the environment as a nested dict; unknown names are errors.
    CHUNKCACHE_STORE=disk|memory is the shorthand of the file's `store = "memory"` and of --store; the
    CHUNKCACHE_STORE__<FIELD> variables apply over it."""
    store_fields = EngineConfig.model_fields["store"].annotation.model_fields
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV:
            continue
        parts = upper[len(ENV_PREFIX):].lower().split("__")
        ok = (len(parts) == 1 and parts[0] in EngineConfig.model_fields) or \
             (len(parts) == 2 and parts[0] == "store" and parts[1] in store_fields)
        if not ok:
            raise ConfigError(f"{name}: unknown environment setting (engine fields are CHUNKCACHE_<FIELD>, store "
                              f"fields CHUNKCACHE_STORE__<FIELD>)")
    shorthand = _store_shorthand()
    try:
        env = _EnvSource(EngineConfig, env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False)()
    except SettingsError as err:
        raise ConfigError(f"environment: {err}") from None
    return merge(shorthand, env)


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers override earlier ones, key by key inside tables."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def explain(err: ValidationError) -> str:
    """One line naming each failed field and why ("decode_correction: Input should be ... (got -3)")."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        if not field:  # a check across fields: its message names them
            parts.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            parts.append(f"{field}: unknown key")
        elif e["type"] == "value_error":
            parts.append(f"{field}: {e['msg'].removeprefix('Value error, ')}")
        elif field.endswith("_url"):  # may hold a password: name the type only
            parts.append(f"{field}: {e['msg']} (got a {type(e['input']).__name__})")
        else:
            parts.append(f"{field}: {e['msg']} (got {e['input']!r})")
    return "; ".join(parts)


def load_config(file: str | Path | None = None, flags: Mapping[str, Any] | None = None) -> EngineConfig:
    """flags > environment > file > defaults. flags: a nested dict of the values given (see config.flags)."""
    file_data = read_file(file) if file else {}
    file_data = {k: v for k, v in file_data.items() if k != SERVER_TABLE}
    if file_data.get("store") in ("disk", "memory"):  # shorthand, expanded so other layers merge into it
        file_data["store"] = {"disk": file_data["store"] == "disk"}
    _check_known(file_data, f"config file {file}")
    layers = [file_data, env_layer(), dict(flags or {})]
    _check_known(layers[2], "flags")
    try:
        return EngineConfig(**merge(*layers))
    except ValidationError as err:
        raise ConfigError(explain(err)) from None


def server_table(file: str | Path | None) -> dict[str, Any]:
    """The file's [server] table (empty without a file)."""
    if not file:
        return {}
    table = read_file(file).get(SERVER_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{SERVER_TABLE}: expected a table in config file {file}")
    return table
