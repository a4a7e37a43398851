"""The model's profile (calibrated ratios, qcfuse's critical layers) is read where the engine's configuration says
(`EngineConfig.profile_root`, under --cache-dir), where `chunkcache calibrate` wrote it: not from the default root."""

import pytest
import torch

from chunkcache.bench.calibrate import store_calibration
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig, rule_revision
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.model_profile import update_profile
from chunkcache.blend.qcfuse import critical_layers
from chunkcache.blend.request import BlendRequest
from chunkcache.config import EngineConfig

PREFIX = (1, 2, 3)


def _request() -> BlendRequest:
    g = torch.Generator().manual_seed(3)
    return BlendRequest.of(PREFIX, [tuple(torch.randint(4, 256, (k,), generator=g).tolist()) for k in (20, 30, 25)],
                           torch.randint(4, 256, (6,), generator=g).tolist())


def _blender(runner, root=None) -> Blender:
    return Blender(runner, ChunkSource(runner, DictStore(), PREFIX), profile_root=root)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """(the configured root, the default one): CHUNKCACHE_DIR points away from the configured root."""
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path / "default"))
    return tmp_path / "configured" / "profiles", tmp_path / "default" / "profiles"


def test_a_calibrated_request_reads_the_ratio_under_the_blenders_root(tiny_runner, roots):
    root, _ = roots
    fp = tiny_runner.fingerprint
    store_calibration(fp, {"mode": "blend", "recompute_ratio": 0.5, "met": True, "n": 1, "rows": [],
                           "config": {"mode": "blend"}, "rule": rule_revision("blend")}, root)
    req, asked = _request(), BlendConfig(mode="blend", calibrated=True)
    blender = _blender(tiny_runner, root)
    assert blender.with_calibrated_ratio(req, asked) == BlendConfig(mode="blend", recompute_ratio=0.5)
    got = blender.prefill(req, asked)
    explicit = _blender(tiny_runner).prefill(req, BlendConfig(mode="blend", recompute_ratio=0.5))
    assert got.stats.recomputed_tokens == explicit.stats.recomputed_tokens > 0
    assert torch.equal(got.logits, explicit.logits)
    with pytest.raises(ValueError, match="chunkcache calibrate --mode blend"):  # nothing under the default root
        _blender(tiny_runner).prefill(req, asked)


def test_qcfuse_reads_the_critical_layers_profiled_under_the_blenders_root(tiny_runner, roots):
    root, default = roots
    fp, n = tiny_runner.fingerprint, tiny_runner.n_layers
    update_profile(fp, root, critical_layers=[0])
    update_profile(fp, default, critical_layers=[n - 1])
    assert critical_layers(tiny_runner, (), root) == (0,)
    assert critical_layers(tiny_runner) == (n - 1,)
    req = _request()
    profiled = _blender(tiny_runner, root).prefill(req, BlendConfig(mode="qcfuse", recompute_ratio=0.2))
    given = _blender(tiny_runner).prefill(req, BlendConfig(mode="qcfuse", recompute_ratio=0.2, critical_layers=(0,)))
    other = _blender(tiny_runner).prefill(req, BlendConfig(mode="qcfuse", recompute_ratio=0.2))
    assert torch.equal(profiled.logits, given.logits)
    assert not torch.equal(profiled.logits, other.logits)  # the default root's layer picks other tokens here


@pytest.mark.slow  # loads the real model
def test_an_engine_from_config_reads_and_calibrates_under_its_cache_dir(smollm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path / "default"))
    cfg = EngineConfig(model_path=str(smollm_dir), store="memory", cache_dir=str(tmp_path / "mine"), threads=1)
    with ChunkCacheEngine.from_config(cfg) as engine:
        assert engine.profile_root == cfg.profile_root == tmp_path / "mine" / "profiles"
        assert engine.blender.profile_root == engine.profile_root
        fp = engine.runner.fingerprint
        store_calibration(fp, {"mode": "blend", "recompute_ratio": 0.3, "met": True, "n": 1, "rows": [],
                               "config": {"mode": "blend"}, "rule": rule_revision("blend")}, cfg.profile_root)
        req = engine.prompts.request(["Paris is the capital of France.", "Rome is in Italy."], "Where is Paris?")
        asked = engine.prefill(req, BlendConfig(mode="blend", calibrated=True))
        explicit = engine.prefill(req, BlendConfig(mode="blend", recompute_ratio=0.3))
        assert asked.stats.recomputed_tokens == explicit.stats.recomputed_tokens
        assert torch.equal(asked.logits, explicit.logits)
