"""Anchors persist under a directory (safetensors entries + SQL catalog): restart, corruption, other model."""

import pytest
from agents_tiny import dense, prefiller, prompt

from chunkcache.agents.anchor_store import AnchorStore
from chunkcache.agents.config import AnchorConfig
from chunkcache.blend.config import BlendConfig

KV = BlendConfig.named("kvcomm")


def _open(runner, root):
    store = AnchorStore(root, runner.fingerprint, runner.n_layers)
    return prefiller(runner, pool=store.open_pool(AnchorConfig())), store


def _fill(runner, root) -> None:
    pf, store = _open(runner, root)
    for seed in (1, 2):
        assert pf.prefill(prompt(seed), KV).stats.anchors_added == 2
    store.close()


def test_restart_keeps_anchors(tiny_runner, tmp_path):
    _fill(tiny_runner, tmp_path)
    assert len(list(tmp_path.glob("*.base.safetensors"))) == 4
    assert len(list(tmp_path.glob("*.safetensors"))) == 8  # 4 bases + 4 (anchor, reader) offsets
    pf, store = _open(tiny_runner, tmp_path)
    assert len(pf.anchors) == 4
    res = pf.prefill(prompt(1), KV)
    assert not res.stats.dense_fallback and res.stats.anchors_hit == 2 and res.stats.anchors_added == 0
    assert (res.logits - dense(tiny_runner, prompt(1)).logits).abs().max().item() < 5e-2
    uses = {a.anchor_id: a.uses for v in pf.anchors.anchors.values() for a in v}
    store.close()
    pf2, store2 = _open(tiny_runner, tmp_path)
    assert {a.anchor_id: a.uses for v in pf2.anchors.anchors.values() for a in v} == uses
    assert sum(uses.values()) >= 2
    store2.close()


def test_corrupt_anchor_falls_back_to_dense(tiny_runner, tmp_path):
    _fill(tiny_runner, tmp_path)
    victims = [p for p in sorted(tmp_path.glob("*.safetensors")) if ".base." not in p.name]
    for victim in victims:  # flip one byte in the middle of every offsets file
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    pf, store = _open(tiny_runner, tmp_path)
    res = pf.prefill(prompt(1), KV)
    assert res.stats.dense_fallback
    assert any("unreadable" in f for f in res.stats.fallbacks), res.stats.fallbacks
    assert res.stats.anchors_hit == 0  # dense from the first placeholder: exact
    assert (res.logits - dense(tiny_runner, prompt(1)).logits).abs().max().item() < 1e-4
    for seed in (2, 1):  # bad anchors are dropped and measured again; then sample 1 is served from anchors
        again = pf.prefill(prompt(seed), KV)
    assert again.stats.fallbacks == []
    assert not again.stats.dense_fallback and again.stats.anchors_hit == 2
    store.close()


def test_missing_anchor_file_falls_back_to_dense(tiny_runner, tmp_path):
    _fill(tiny_runner, tmp_path)
    for p in tmp_path.glob("*.base.safetensors"):
        p.unlink()
    pf, store = _open(tiny_runner, tmp_path)
    res = pf.prefill(prompt(1), KV)
    assert res.stats.dense_fallback and any("missing" in f for f in res.stats.fallbacks)
    store.close()


def test_pool_of_another_model_is_refused(tiny_runner, tmp_path):
    _fill(tiny_runner, tmp_path)
    with pytest.raises(ValueError, match="another model"):
        AnchorStore(tmp_path, "0" * 32, tiny_runner.n_layers)
