"""The CPU guard: the request path builds every position/index/mask tensor on an explicit device."""

import pytest
import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.runner.decode import SamplingConfig, decode
from test_blender_modes import _request
from device_guard import ImplicitDeviceError, require_device


def test_guard_catches_a_bare_factory():
    with require_device():
        with pytest.raises(ImplicitDeviceError, match="arange"):
            torch.arange(3)
        with pytest.raises(ImplicitDeviceError, match="zeros"):
            torch.zeros(2, dtype=torch.float32)
        assert torch.arange(3, device="cpu").tolist() == [0, 1, 2]
        assert torch.zeros_like(torch.ones(2, device="cpu")).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("cfg", [
    BlendConfig(mode="full"), BlendConfig(mode="prefix"), BlendConfig(mode="naive"),
    BlendConfig(mode="cacheblend", recompute_ratio=0.3), BlendConfig(mode="adaptive", recompute_ratio=0.5),
    BlendConfig(mode="cacheblend", check_layers=(1, 2), selection="attention_deviation"),
    BlendConfig(mode="cacheblend", selection="attention"), BlendConfig(mode="adaptive", selection="attention"),
    BlendConfig(mode="cacheblend", selection="random"),
], ids=lambda c: f"{c.mode}-{c.selection}")
def test_blend_path_names_its_device(tiny_blender, cfg):
    """Run cold (chunks computed on the request path) then warm; compare with the unguarded result."""
    req = _request()
    with require_device():
        cold = tiny_blender.prefill(req, cfg, reserve=4)
        warm = tiny_blender.prefill(req, cfg, reserve=4)
        tokens = list(decode(tiny_blender.runner, cold.cache, cold.logits, SamplingConfig(max_new_tokens=4), set()))
    ref = tiny_blender.prefill(req, cfg)
    torch.testing.assert_close(warm.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cold.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert len(tokens) == 4 and tokens[0] == int(ref.logits.argmax())


def test_blend_over_a_tiered_store_names_its_device(tiny_runner, tmp_path):
    """The store path too: misses computed and put (CPU tier + background disk write), then memory hits,
    then disk hits from a fresh store (layer streams), all under the guard."""
    from chunkcache.blend.blender import Blender
    from chunkcache.blend.chunk_source import ChunkSource
    from chunkcache.config import StoreSettings
    from chunkcache.store.chunk_store import ChunkStore

    req, cfg = _request(), BlendConfig(mode="cacheblend", recompute_ratio=0.3)
    results = []
    for _ in range(2):
        with ChunkStore(StoreSettings().store_config(tmp_path)) as store:
            blender = Blender(tiny_runner, ChunkSource(tiny_runner, store, (1, 2, 3)))
            with require_device():
                results += [blender.prefill(req, cfg), blender.prefill(req, cfg)]
    assert [r.stats.chunk_misses for r in results] == [4, 0, 0, 0]
    for r in results[1:]:
        torch.testing.assert_close(r.logits, results[0].logits, atol=1e-5, rtol=1e-5)
