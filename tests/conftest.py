"""Shared fixtures: a tiny random llama (fast exactness tests) and the real default model (end to end)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# Triton fixes interpreter vs compiled mode when triton.language is first imported, and a module collected
# before tests/kernels/ can import it (transformers' model classes do): the kernel tests need the interpreter.
# CHUNKCACHE_TRITON_COMPILED=1 leaves Triton compiled, for the `cuda` tests on a GPU (benchmarks/device_check.sh).
if os.environ.get("CHUNKCACHE_TRITON_COMPILED") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.blender import Blender
from chunkcache.runner.runner import ModelRunner
from tiny_models import tiny_llama


@pytest.fixture(scope="session")
def tiny_runner() -> ModelRunner:
    return ModelRunner(tiny_llama())


@pytest.fixture
def tiny_blender(tiny_runner):
    """A blender over a fresh in-memory store; chunks precomputed behind the prefix (1, 2, 3)."""
    source = ChunkSource(tiny_runner, DictStore(), context_ids=(1, 2, 3))
    return Blender(tiny_runner, source)


def naive_context_cache(blender: Blender, req):
    """The naive merged cache of req (every chunk placed, nothing recomputed), cut before the suffix."""
    from chunkcache.blend.config import BlendConfig

    cache = blender.prefill(req, BlendConfig(mode="naive")).cache
    cache.truncate(req.suffix_start)
    return cache


@pytest.fixture
def naive_cache():
    """naive_context_cache, for tests that probe the cache a selector sees."""
    return naive_context_cache


@pytest.fixture(scope="session")
def smollm_dir():
    """The default model's directory (SmolLM2-135M-Instruct), converted once into the user cache."""
    from chunkcache.runner.loader import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def smollm(smollm_dir):
    """The real default model, loaded."""
    from chunkcache.runner.loader import load_model

    return load_model(smollm_dir)


SLOW_FIXTURES = {"smollm", "live_server"}  # the real model, a live `chunkcache serve` subprocess
MAX_WORKERS = 4  # each worker holds the real model and may start servers: about 2 GiB at its peak


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):  # type: ignore[no-untyped-def]
    """`-n auto` (pyproject's addopts): one worker per CPU this process may run on, at most MAX_WORKERS. Most tests
    run one torch thread, or wait on a subprocess, so two workers on 2 vCPUs take about 0.7x the serial time.
    PYTEST_XDIST_AUTO_NUM_WORKERS overrides it."""
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
               MAX_WORKERS)


ADDOPTS_PLUGINS = ("xdist", "benchmark")  # pyproject's addopts: --numprocesses, --dist, --benchmark-disable


def pytest_addoption(parser, pluginmanager):  # type: ignore[no-untyped-def]
    """Without the test extra's pytest-xdist and pytest-benchmark, pyproject's addopts would stop pytest at
    "unrecognized arguments": accept them here, and pytest_configure names the extra to install (or, where the
    caller blocked the plugin, `-p no:xdist`, ignores them)."""
    if not pluginmanager.has_plugin("xdist"):
        parser.addoption("--numprocesses", default=None, help="ignored: pytest-xdist is not active")
        parser.addoption("--dist", default="no", help="ignored: pytest-xdist is not active")
    if not pluginmanager.has_plugin("benchmark"):
        parser.addoption("--benchmark-disable", action="store_true", help="ignored: pytest-benchmark is not active")


def pytest_configure(config):  # type: ignore[no-untyped-def]
    """Refuse a run without the addopts' plugins (above). The run's C++ kernel builds and attention-dispatch
    decisions go to a kernel cache of its own, under pytest's cache dir (kept between runs), not the user's
    ~/.cache/chunkcache/kernels that `chunkcache serve` reads: those decisions are measured while other workers load
    the CPU. The controller sets it before it starts the workers, which inherit it with the servers they spawn;
    CHUNKCACHE_KERNEL_CACHE set by the caller wins."""
    missing = [p for p in ADDOPTS_PLUGINS
               if not config.pluginmanager.has_plugin(p) and not config.pluginmanager.is_blocked(p)]
    if missing:
        raise pytest.UsageError(f"pytest plugins {', '.join(missing)} not installed: install the test extra first, "
                                "pip install -c constraints.txt torch==2.13.0 -e \".[test]\" (README, Quick start)")
    if os.environ.get("CHUNKCACHE_KERNEL_CACHE"):
        return
    from chunkcache.kernels._cpp import private_dir

    if getattr(config, "cache", None) is not None:
        root = config.cache.mkdir("chunkcache")
    else:  # -p no:cacheprovider: a temporary one, removed at the end
        root = Path(tempfile.mkdtemp(prefix="chunkcache-test-"))
        config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))
    os.environ["CHUNKCACHE_KERNEL_CACHE"] = str(private_dir(root / "kernels"))  # 0700: _cpp refuses a shared one


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Every test that needs the real model or a live server is `slow`: `pytest -m "not slow"` is the fast subset.
    Tests marked `cuda` are deselected (not skipped) where no CUDA device exists, and the run says so."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    config._chunkcache_deselected = []
    if not torch.cuda.is_available():
        _deselect(config, items, "cuda", "no CUDA device on this machine")
    if os.environ.get("CHUNKCACHE_REQUIRE_LMCACHE") != "1" and importlib.util.find_spec("lmcache") is None:
        _deselect(config, items, "lmcache", "LMCache not installed (optional extra; .ci/run installs it and "
                  "sets CHUNKCACHE_REQUIRE_LMCACHE=1)")
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller prints the lines (pytest_testnodedown)
        config.workeroutput["chunkcache_deselected"] = config._chunkcache_deselected


def _deselect(config, items, marker: str, why: str) -> None:  # type: ignore[no-untyped-def]
    chosen = [item for item in items if item.get_closest_marker(marker)]
    if chosen:
        config.hook.pytest_deselected(items=chosen)
        items[:] = [item for item in items if not item.get_closest_marker(marker)]
        config._chunkcache_deselected.append(f"{len(chosen)} {marker} tests deselected: {why}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # type: ignore[no-untyped-def]
    """xdist's controller collects nothing itself: every worker deselects the same tests, so keep one's lines."""
    lines = getattr(node, "workeroutput", {}).get("chunkcache_deselected")
    if lines is not None:
        node.config._chunkcache_deselected = lines


def pytest_terminal_summary(terminalreporter, config):  # type: ignore[no-untyped-def]
    for line in getattr(config, "_chunkcache_deselected", []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_dir):
    """The real default model's tokenizer only (fast: no weights loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)
