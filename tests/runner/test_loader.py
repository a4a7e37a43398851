"""Where the default model is looked for and converted: the configured cache dir first, then an earlier
conversion under the default root, else a fresh conversion under the configured dir."""

import pytest

from chunkcache.runner import loader


def _converted(root):
    out = root / "models" / "SmolLM2-135M-Instruct"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"")
    return out


@pytest.fixture
def roots(tmp_path, monkeypatch):
    default, configured = tmp_path / "default", tmp_path / "configured"
    monkeypatch.setenv("CHUNKCACHE_DIR", str(default))
    fetched = []
    monkeypatch.setattr(loader, "_fetch_default", lambda root: fetched.append(root) or root / "fetched")
    return default, configured, fetched


def test_configured_dir_conversion_is_used_first(roots):
    default, configured, fetched = roots
    _converted(default)
    mine = _converted(configured)
    assert loader.default_model_dir(configured) == mine
    assert fetched == []


def test_default_root_conversion_is_reused(roots):
    default, configured, fetched = roots
    shared = _converted(default)
    assert loader.default_model_dir(configured) == shared
    assert fetched == []


def test_fresh_conversion_goes_under_the_configured_dir(roots):
    default, configured, fetched = roots
    assert loader.default_model_dir(str(configured)) == configured / "fetched"
    assert loader.default_model_dir() == default / "fetched"
    assert fetched == [configured, default]


def test_processes_starting_together_fetch_once(tmp_path, monkeypatch):
    """Two first uses at once (two `serve` processes, two test workers): the second waits on the lock, then finds
    the first one's conversion instead of fetching and renaming over it. Each thread opens the lock file on
    its own, as processes do."""
    import threading
    import time

    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path / "default"))
    fetched = []

    def slow_fetch(root):
        fetched.append(root)
        time.sleep(0.3)  # the other caller arrives while this one converts
        return _converted(root)

    monkeypatch.setattr(loader, "_fetch_default", slow_fetch)
    found = []
    threads = [threading.Thread(target=lambda: found.append(loader.default_model_dir(tmp_path / "c"))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fetched == [tmp_path / "c"]
    assert found == [tmp_path / "c" / "models" / "SmolLM2-135M-Instruct"] * 2


def test_engine_loads_the_conversion_under_its_cache_dir(smollm_dir, tmp_path, monkeypatch):
    """EngineConfig.cache_dir reaches the loader: with the default root empty, the engine loads the model from
    its own cache dir and fetches nothing."""
    from chunkcache.blend.engine import ChunkCacheEngine
    from chunkcache.config import EngineConfig

    mine = tmp_path / "mine" / "models" / "SmolLM2-135M-Instruct"
    mine.parent.mkdir(parents=True)
    mine.symlink_to(smollm_dir, target_is_directory=True)
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(loader, "_fetch_default", lambda root: pytest.fail(f"fetched the model under {root}"))
    with ChunkCacheEngine.from_config(EngineConfig(cache_dir=str(tmp_path / "mine"), store="memory")) as engine:
        assert engine.runner.n_layers == 30
