"""EngineConfig: layer precedence (flags > env > file > defaults) and bad values named before any model loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chunkcache.config import ConfigError, EngineConfig, StoreSettings, check_config, load_config
from chunkcache.config.flags import flag_layer
from chunkcache.config.loading import OTHER_ENV
from chunkcache.store.config import GiB

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CHUNKCACHE_") and name.upper() not in OTHER_ENV:
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "chunkcache.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def redis(cfg: EngineConfig) -> str | None:
    return None if cfg.store.redis_url is None else cfg.store.redis_url.get_secret_value()


def test_defaults_map_onto_the_store_config() -> None:
    cfg = load_config()
    assert (cfg.device, cfg.resolved_dtype, cfg.kernels, cfg.use_triton) == ("cpu", "float32", "auto", None)
    sc = cfg.store.store_config("/x/store")
    assert [t.kind for t in sc.tiers] == ["cpu", "disk"]
    assert sc.tiers[0].budget_bytes == GiB and sc.tiers[1].write_through
    assert sc.resolved_catalog_url == "sqlite:////x/store/catalog.sqlite"
    assert EngineConfig(device="cuda").resolved_dtype == "bfloat16"


def test_every_layer_overrides_the_one_below(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path, 'dtype = "bfloat16"\nthreads = 3\nkernels = "torch"\n'
                        '[store]\ncpu_bytes = "256MiB"\neviction = "cost"\nredis_url = "redis://file:1/0"\n')
    cfg = load_config(f)
    assert (cfg.dtype, cfg.threads, cfg.kernels) == ("bfloat16", 3, "torch")
    assert (cfg.store.cpu_bytes, cfg.store.eviction, redis(cfg)) == (256 << 20, "cost", "redis://file:1/0")

    monkeypatch.setenv("CHUNKCACHE_THREADS", "2")
    monkeypatch.setenv("CHUNKCACHE_STORE__CPU_BYTES", "512MiB")
    monkeypatch.setenv("CHUNKCACHE_STORE__REDIS_URL", "redis://env:1/0")
    cfg = load_config(f)
    assert (cfg.dtype, cfg.threads) == ("bfloat16", 2)  # dtype from the file, threads from env
    assert (cfg.store.cpu_bytes, cfg.store.eviction, redis(cfg)) == (512 << 20, "cost", "redis://env:1/0")

    from chunkcache.cli import build_parser

    args = build_parser().parse_args(["--threads", "1", "demo", "--redis-url", "redis://flag:1/0", "--store", "memory",
                                      "--kv-codec", "int8"])
    cfg = load_config(f, flag_layer(args))
    assert (cfg.dtype, cfg.threads, cfg.kernels) == ("bfloat16", 1, "torch")
    assert (cfg.store.cpu_bytes, redis(cfg), cfg.store.disk) == (512 << 20, "redis://flag:1/0", False)
    assert (cfg.store.disk_codec, cfg.store.redis_codec) == ("int8", "int8")
    assert [t.kind for t in cfg.store_config().tiers] == ["cpu", "remote"]


def test_store_shorthand_in_a_file_merges_with_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKCACHE_STORE__CPU_BYTES", "1MiB")
    cfg = load_config(write(tmp_path, 'store = "memory"\n'))
    assert (cfg.store.disk, cfg.store.cpu_bytes) == (False, 1 << 20)
    assert [t.kind for t in cfg.store_config().tiers] == ["cpu"] and not cfg.store_config().wants_catalog


def test_yaml_file(tmp_path: Path) -> None:
    f = write(tmp_path, "device: cpu\nstore:\n  gpu_bytes: 0\n  write: back\n", "c.yaml")
    assert load_config(f).store.write == "back"
    assert not any(t.write_through for t in load_config(f).store_config().tiers)


@pytest.mark.parametrize("text, field", [
    ('devise = "cpu"\n', "devise"),
    ('[store]\ncpu_byte = 5\n', "store.cpu_byte"),
    ('[store]\ncpu_bytes = -1\n', "store.cpu_bytes"),
    ('[store]\ncpu_bytes = "-1GiB"\n', "store.cpu_bytes"),
    ('dtype = "fp8"\n', "dtype"),
    ('device = "tpu"\n', "device"),
    ('[store]\ndisk_codec = "zstd"\n', "store.disk_codec"),
    ('[store]\neviction = "mru"\n', "store.eviction"),
    ('[store]\nredis_url = "http://x"\n', "store.redis_url"),
    ('[store]\ngpu_bytes = "1GiB"\n', "store.gpu_bytes"),
])
def test_bad_file_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_unknown_env_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKCACHE_DEVISE", "cpu")
    with pytest.raises(ConfigError, match="^CHUNKCACHE_DEVISE: unknown"):
        load_config()
    monkeypatch.delenv("CHUNKCACHE_DEVISE")
    monkeypatch.setenv("CHUNKCACHE_STORE__REDIS", "redis://x")
    with pytest.raises(ConfigError, match="^CHUNKCACHE_STORE__REDIS: unknown"):
        load_config()
    monkeypatch.delenv("CHUNKCACHE_STORE__REDIS")
    monkeypatch.setenv("CHUNKCACHE_STORE__GPU_BYTES", "-3")
    with pytest.raises(ConfigError, match="^store.gpu_bytes: a byte budget must be >= 0"):
        load_config()


def test_non_engine_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Variables other parts read (the kernels' build cache, the cache root, the API key) pass the check."""
    monkeypatch.setenv("CHUNKCACHE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CHUNKCACHE_API_KEY", "k")
    assert load_config().device == "cpu"


def test_checks_name_the_missing_device_and_unreachable_urls(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^device: 'cuda' is not present"):
            check_config(EngineConfig(device="cuda"))
    with pytest.raises(ConfigError, match="^device: 'cuda:99' is not present"):
        check_config(EngineConfig(device="cuda:99"))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="^store.redis_url: cannot reach redis://127.0.0.1:1/0"):
        check_config(EngineConfig(cache_dir=str(tmp_path), store=StoreSettings(redis_url="redis://127.0.0.1:1/0")))
    with pytest.raises(ConfigError, match="^store.catalog_url: cannot connect"):
        check_config(EngineConfig(cache_dir=str(tmp_path),
                                  store=StoreSettings(catalog_url="postgresql+psycopg2://u@127.0.0.1:1/db")))
    assert time.monotonic() - t0 < 10
    with pytest.raises(ConfigError, match="^model_path: "):
        check_config(EngineConfig(model_path=str(tmp_path)))
    check_config(EngineConfig(cache_dir=str(tmp_path)))  # the default: SQLite under the cache dir


def test_cli_exits_2_naming_the_field_before_loading_a_model(tmp_path: Path) -> None:
    f = write(tmp_path, '[store]\nredis_url = "redis://127.0.0.1:1/0"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKCACHE_")}
    env.update(PYTHONPATH=str(ROOT), CHUNKCACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cases = [(["serve", "--config", str(f)], "store.redis_url: cannot reach"),
             (["--device", "cuda:7", "demo"], "device: 'cuda:7' is not present"),
             (["ask", "q", "--cpu-bytes", "-1"], "store.cpu_bytes: a byte budget must be >= 0"),
             (["serve", "--config", str(write(tmp_path, "[server]\nprot = 1\n", "s.toml"))],
              "server.prot: unknown key"),
             (["stats", "--config", str(write(tmp_path, "modell = 'x'\n", "m.toml"))], "modell: unknown key"),
             (["ask", "q", "--decode-correction", "-3"], "error: decode_correction: Input should be greater than"),
             (["ingest", str(tmp_path), "--chunk-tokens", "8"], "chunk_tokens must be in [16, 4096], got 8"),
             (["demo", "--example", "40"], "musique_dev.json holds 40 examples (0 to 39)"),
             (["bench", "tasks", "--suite", "hotpotqa", "--data", str(write(tmp_path, "[{", "h.json"))],
              "h.json: not JSON ("),
             (["serve", "--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000 (Cannot assign requested address)")]
    taken = socket.create_server(("127.0.0.1", 0))  # uvicorn binds only after the model has loaded
    port = taken.getsockname()[1]
    cases.append((["serve", "--port", str(port)], f"cannot listen on 127.0.0.1:{port} (Address already in use)"))

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chunkcache.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=60)

    with ThreadPoolExecutor(2) as pool:  # two at a time: each process is mostly python and torch importing
        results = list(pool.map(run, [argv for argv, _ in cases]))
    taken.close()
    for (argv, message), r in zip(cases, results, strict=True):
        assert r.returncode == 2, (argv, r.stderr[-2000:])
        assert message in r.stderr, (argv, r.stderr[-2000:])
        assert "Loading weights" not in r.stderr, argv
    assert not (tmp_path / "cache" / "store").exists()


def test_readme_example_file_loads(tmp_path: Path) -> None:
    """The annotated file in README's Configuration section is a valid configuration."""
    import re

    from chunkcache.api.config import ServerConfig
    from chunkcache.config import server_table

    text = re.search(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    f = write(tmp_path, text)
    cfg = load_config(f)
    server = ServerConfig.from_layers(cfg, server_table(f), {})
    assert [t.kind for t in cfg.store_config().tiers] == ["cpu", "disk", "remote"]
    assert cfg.store_config().tiers[2].codec == "int8" and server.max_queue == 16


def test_urls_with_passwords_never_show_them(tmp_path: Path) -> None:
    """repr, validation errors and start-up check errors of EngineConfig carry no password."""
    redis_url, pg_url = "redis://:r3d-Pw@127.0.0.1:1/0", "postgresql+psycopg2://u:pg-Pw@127.0.0.1:1/db"
    cfg = EngineConfig(cache_dir=str(tmp_path), store=StoreSettings(redis_url=redis_url, catalog_url=pg_url))
    shown = [repr(cfg), str(cfg), repr(cfg.store_config()), str(cfg.model_dump())]
    with pytest.raises(ConfigError) as bad_scheme:
        load_config(write(tmp_path, '[store]\nredis_url = "http://u:r3d-Pw@x"\n'))
    with pytest.raises(ConfigError) as bad_type:
        load_config(write(tmp_path, '[store]\nredis_url = ["r3d-Pw"]\n', "b.toml"))
    with pytest.raises(ConfigError) as unreachable:
        check_config(EngineConfig(cache_dir=str(tmp_path), store=StoreSettings(redis_url=redis_url)))
    with pytest.raises(ConfigError) as no_db:
        check_config(EngineConfig(cache_dir=str(tmp_path), store=StoreSettings(catalog_url=pg_url)))
    shown += [str(e.value) for e in (bad_scheme, bad_type, unreachable, no_db)]
    assert "redis://:***@127.0.0.1:1/0" in str(unreachable.value)
    assert "postgresql+psycopg2://u:***@127.0.0.1:1/db" in str(no_db.value)
    assert not [s for s in shown if "r3d-Pw" in s or "pg-Pw" in s], shown
    assert cfg.store_config().tiers[-1].url.get_secret_value() == redis_url  # the client still gets it
