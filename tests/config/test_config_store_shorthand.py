"""The store shorthand `disk` / `memory` is one setting in every layer: `store = "memory"` in the file,
CHUNKCACHE_STORE=memory in the environment, --store memory on the command line, with the one precedence
flags > env > file > defaults, and CHUNKCACHE_STORE__<FIELD> variables applying over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chunkcache.cli import build_parser
from chunkcache.config import ConfigError, load_config
from chunkcache.config.flags import flag_layer
from chunkcache.config.loading import OTHER_ENV


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CHUNKCACHE_") and name.upper() not in OTHER_ENV:
            monkeypatch.delenv(name)


def _load(file: Path | None, *argv: str):  # type: ignore[no-untyped-def]
    return load_config(file, flag_layer(build_parser().parse_args([*argv, "stats"])))


@pytest.mark.parametrize("file_value", [None, "disk", "memory"])
@pytest.mark.parametrize("env_value", [None, "disk", "memory"])
@pytest.mark.parametrize("flag_value", [None, "disk", "memory"])
def test_store_shorthand_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_value: str | None,
                                    env_value: str | None, flag_value: str | None) -> None:
    file = None
    if file_value is not None:
        file = tmp_path / "c.toml"
        file.write_text(f'store = "{file_value}"\n')
    if env_value is not None:
        monkeypatch.setenv("CHUNKCACHE_STORE", env_value)
    argv = ("--store", flag_value) if flag_value else ()
    want = next((v for v in (flag_value, env_value, file_value) if v is not None), "disk")
    assert _load(file, *argv).store.disk is (want == "disk")


def test_env_shorthand_merges_with_store_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[store]\ncpu_bytes = "64MiB"\neviction = "cost"\n')
    monkeypatch.setenv("CHUNKCACHE_STORE", "memory")
    monkeypatch.setenv("CHUNKCACHE_STORE__CPU_BYTES", "32MiB")
    cfg = _load(file)
    assert (cfg.store.disk, int(cfg.store.cpu_bytes), cfg.store.eviction) == (False, 32 << 20, "cost")
    monkeypatch.setenv("CHUNKCACHE_STORE__DISK", "true")  # the field is more specific than the shorthand
    assert _load(file).store.disk is True
    monkeypatch.delenv("CHUNKCACHE_STORE__DISK")
    monkeypatch.setenv("CHUNKCACHE_STORE", '{"disk": false, "eviction": "lru"}')  # a JSON table still works
    assert (_load(file).store.disk, _load(file).store.eviction) == (False, "lru")


def test_env_shorthand_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKCACHE_STORE", "ram")
    with pytest.raises(ConfigError, match="CHUNKCACHE_STORE: must be 'disk', 'memory' or a JSON table.*'ram'"):
        load_config()


@pytest.mark.slow
def test_cli_with_env_store_memory_writes_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CHUNKCACHE_")}
    env.update(CHUNKCACHE_STORE="memory", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "chunkcache.cli", "stats", "--json", "--cache-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)["tiers"]) == ["cpu"]
    assert not any(tmp_path.rglob("*")), sorted(map(str, tmp_path.rglob("*")))
