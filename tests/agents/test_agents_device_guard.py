"""The CPU guard over the agents prefill path (see tests/device_guard.py)."""

import agents_tiny
import pytest
import torch
from device_guard import require_device

from chunkcache.blend.config import BlendConfig


@pytest.mark.parametrize("mode", ["full", "prefix", "kvcomm", "cacheblend", "blend", "kvcomm+blend", "kvcomm+epic"])
def test_agents_prefill_names_its_device(tiny_runner, mode):
    pre = agents_tiny.prefiller(tiny_runner)
    p, q = agents_tiny.prompt(3), agents_tiny.prompt(4)
    cfg = BlendConfig.named(mode)
    with require_device():
        first = pre.prefill(p, cfg)
        second = pre.prefill(q, cfg)
    ref = agents_tiny.prefiller(tiny_runner).prefill(p, cfg)
    assert first.logits.shape == second.logits.shape == (tiny_runner.model.config.vocab_size,)
    torch.testing.assert_close(first.logits, ref.logits, atol=1e-5, rtol=1e-5)
