"""Where `chunkcache serve` takes its API key from: --api-key-file, $CHUNKCACHE_API_KEY_FILE and the
[server] table's api_key_file, besides the key itself; flags > env > file table, one source per layer.

The arguments go through the real `chunkcache` parser and `server_config`, as `serve` resolves them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkcache.cli import build_parser
from chunkcache.cli.serve import server_config
from chunkcache.config import ConfigError, EngineConfig

ENV = ("CHUNKCACHE_API_KEY", "CHUNKCACHE_API_KEY_FILE")


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def _key(*argv: str) -> str | None:
    args = build_parser().parse_args(["serve", *argv])
    args.engine = EngineConfig(store="memory")
    return server_config(args).api_key


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_api_key_file_flag_strips_the_newline(tmp_path: Path) -> None:
    assert _key("--api-key-file", _file(tmp_path, "key", "from-file\n")) == "from-file"


def test_api_key_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKCACHE_API_KEY_FILE", _file(tmp_path, "key", "env-file"))
    assert _key() == "env-file"
    monkeypatch.delenv("CHUNKCACHE_API_KEY_FILE")
    monkeypatch.setenv("CHUNKCACHE_API_KEY", "env-key")
    assert _key() == "env-key"


def test_api_key_precedence_flags_env_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _file(tmp_path, "c.toml", f'[server]\napi_key_file = "{_file(tmp_path, "t", "table-file")}"\n')
    assert _key("--config", cfg) == "table-file"
    monkeypatch.setenv("CHUNKCACHE_API_KEY", "env-key")
    assert _key("--config", cfg) == "env-key"
    assert _key("--config", cfg, "--api-key-file", _file(tmp_path, "f", "flag-file")) == "flag-file"
    assert _key("--config", cfg, "--api-key", "flag-key") == "flag-key"


def test_api_key_and_file_in_one_layer_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--api-key-file: give the API key or a file"):
        _key("--api-key", "k", "--api-key-file", _file(tmp_path, "f", "k2"))
    monkeypatch.setenv("CHUNKCACHE_API_KEY", "a")
    monkeypatch.setenv("CHUNKCACHE_API_KEY_FILE", _file(tmp_path, "g", "b"))
    with pytest.raises(ConfigError, match="CHUNKCACHE_API_KEY_FILE: give the API key"):
        _key()


@pytest.mark.parametrize("content", ["", "  \n"])
def test_api_key_file_empty_or_missing_names_the_source(tmp_path: Path, content: str) -> None:
    with pytest.raises(ConfigError, match="--api-key-file: the API key file .* is empty"):
        _key("--api-key-file", _file(tmp_path, "empty", content))
    with pytest.raises(ConfigError, match="--api-key-file: cannot read the API key file"):
        _key("--api-key-file", str(tmp_path / "absent"))
