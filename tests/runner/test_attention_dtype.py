"""attention_dtype="bfloat16": the prefill's C++ attention with bf16 products, taken only where measured faster,
keyed apart; decode steps and decode-time correction keep fp32 attention."""

import pytest
import torch
from pydantic import ValidationError
from tiny_models import tiny_llama

from chunkcache.config.flags import engine_flags, flag_layer
from chunkcache.config.loading import load_config
from chunkcache.config.settings import EngineConfig
from chunkcache.kernels.attention_dispatch import measure_bf16
from chunkcache.kernels.sparse_attention_bf16 import bf16_kernel_available
from chunkcache.runner import runner as runner_module
from chunkcache.runner.runner import ModelRunner

needs_bf16 = pytest.mark.skipif(not bf16_kernel_available(), reason="no AVX512-BF16 build of the C++ kernel here")


def _model(seed: int = 3):
    """head_dim 64: a head size the C++ kernel takes."""
    return tiny_llama(seed=seed, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture
def measured(monkeypatch):
    """Set what the start-up measurement finds: a CPU where bf16 loses cannot be produced here."""
    def set_speedup(value: float | None) -> None:
        monkeypatch.setattr(runner_module, "measure_bf16", lambda shape, march: value)
    return set_speedup


@needs_bf16
def test_bf16_attention_runs_in_the_prefill_only_and_keys_its_kv_apart(measured):
    measured(2.0)
    fp32 = ModelRunner(_model(), kernels="cpp")
    bf16 = ModelRunner(_model(), kernels="cpp", attention_dtype="bfloat16")
    assert bf16.attention_bf16 and not fp32.attention_bf16 and "bf16 in the prefill" in bf16.attention_precision
    assert bf16.fingerprint != fp32.fingerprint and bf16.profile_fingerprint == fp32.profile_fingerprint
    ids = torch.randint(0, 256, (120,), generator=torch.Generator().manual_seed(0))
    caches = {}
    for name, r in (("fp32", fp32), ("bf16", bf16)):
        cache = r.new_cache(128)
        r.extend(ids, cache)  # a causal square: SDPA in both, so the two caches start equal
        caches[name] = cache
    assert torch.equal(caches["fp32"].keys[:, :, :120], caches["bf16"].keys[:, :, :120])
    positions = torch.tensor([3, 10, 17, 40, 77, 100, 119])  # scattered: the C++ kernel's calls
    out = {}
    for decode in (False, True):
        for name, r in (("fp32", fp32), ("bf16", bf16)):
            out[name, decode] = r.forward_rows(ids[positions], positions, caches[name], decode=decode)
    assert not torch.equal(out["bf16", False], out["fp32", False])  # bf16 products in the prefill
    torch.testing.assert_close(out["bf16", False], out["fp32", False], atol=0.1, rtol=0.05)
    # the decode-time pass attends in fp32: what differs is only the prefill pass's KV the caches now hold
    ref = fp32.new_cache(128)
    ref.write(slice(None), slice(0, 120), caches["bf16"].keys[:, :, :120], caches["bf16"].values[:, :, :120])
    assert torch.equal(out["bf16", True], fp32.forward_rows(ids[positions], positions, ref, decode=True))


def test_bf16_attention_stays_off_where_it_is_not_faster_or_cannot_run(measured):
    plain = ModelRunner(_model(), kernels="cpp")
    for value, why in ((0.9, "measured 0.90x"), (None, "no bf16 C++ kernel here")):
        measured(value)
        r = ModelRunner(_model(), kernels="cpp", attention_dtype="bfloat16")
        assert not r.attention_bf16 and why in r.attention_precision
        assert r.fingerprint == plain.fingerprint  # it computes what the fp32 runner does: same KV key
    measured(2.0)
    forced = ModelRunner(_model(), kernels="torch", attention_dtype="bfloat16")  # no C++ attention runs
    assert not forced.attention_bf16 and "kernels=torch" in forced.attention_precision


def test_measure_bf16_times_the_kernel_here_and_declines_other_models():
    runner = ModelRunner(_model(), kernels="cpp")
    shape = runner.attention_shape
    got = measure_bf16(shape, runner.attention.cpp_march)
    assert (got is None) == (not bf16_kernel_available())
    assert got is None or got > 0
    assert measure_bf16(shape.__class__(**{**shape.__dict__, "dtype": "bfloat16"}), "native") is None


def test_the_config_checks_it_and_the_flag_reaches_it(monkeypatch):
    with pytest.raises(ValidationError, match="attention_dtype"):
        EngineConfig(attention_dtype="bfloat16", dtype="bfloat16")
    with pytest.raises(ValidationError, match="attention_dtype"):
        EngineConfig(attention_dtype="float8")
    args = engine_flags().parse_args(["--attention-dtype", "bfloat16"])
    assert load_config(None, flag_layer(args)).attention_dtype == "bfloat16"
    monkeypatch.setenv("CHUNKCACHE_ATTENTION_DTYPE", "bfloat16")
    assert load_config().attention_dtype == "bfloat16"
