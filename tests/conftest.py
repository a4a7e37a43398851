"""Shared fixtures: a tiny random llama (fast exactness tests) and the real default model (end to end)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.blender import Blender
from chunkcache.runner.runner import ModelRunner


def tiny_llama(seed: int = 0, **overrides):
    """A 4-layer random LlamaForCausalLM (GQA 4:2, head_dim 16), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa")).eval()
    with torch.no_grad():  # random init is too flat to give attention any structure; sharpen it
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
    return model


@pytest.fixture(scope="session")
def tiny_runner() -> ModelRunner:
    return ModelRunner(tiny_llama())


@pytest.fixture
def tiny_blender(tiny_runner):
    """A blender over a fresh in-memory store; chunks precomputed behind the prefix (1, 2, 3)."""
    source = ChunkSource(tiny_runner, DictStore(), context_ids=(1, 2, 3))
    return Blender(tiny_runner, source)


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


def _deselect(config, items, marker: str, why: str) -> None:  # type: ignore[no-untyped-def]
    chosen = [item for item in items if item.get_closest_marker(marker)]
    if chosen:
        config.hook.pytest_deselected(items=chosen)
        items[:] = [item for item in items if not item.get_closest_marker(marker)]
        config._chunkcache_deselected.append(f"{len(chosen)} {marker} tests deselected: {why}")


def pytest_terminal_summary(terminalreporter, config):  # type: ignore[no-untyped-def]
    for line in getattr(config, "_chunkcache_deselected", []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_dir):
    """The real default model's tokenizer only (fast: no weights loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)
