"""linear_dtype="bfloat16": the decoder's GEMMs in bf16, taken only where measured faster, keyed apart."""

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from tiny_models import tiny_llama

from chunkcache.blend.model_profile import update_profile
from chunkcache.blend.qcfuse import critical_layers, fallback_layers
from chunkcache.config.flags import engine_flags, flag_layer
from chunkcache.config.loading import load_config
from chunkcache.config.settings import EngineConfig
from chunkcache.runner import linear
from chunkcache.runner.linear import Bf16Linear, apply_linear_dtype, bf16_speedup, decoder_linears
from chunkcache.runner.runner import ModelRunner


@pytest.fixture
def measured(monkeypatch):
    """Set what the bf16 probe measures: a CPU without native bf16 cannot be produced here."""
    def set_speedup(value: float) -> None:
        monkeypatch.setattr(linear, "bf16_speedup", lambda layer: value)
    return set_speedup


def test_bf16_linear_rounds_inputs_and_weights_and_returns_fp32():
    lin = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(5, 64)
    got = Bf16Linear(lin)(x)
    ref = (x.to(torch.bfloat16).double() @ lin.weight.to(torch.bfloat16).double().T
           + lin.bias.to(torch.bfloat16).double())  # bf16 operands, exact accumulation
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=0.02, rtol=0.01)  # the output's own bf16 rounding
    assert (got - F.linear(x, lin.weight, lin.bias)).abs().max() > 0  # not the fp32 product


def test_runner_swaps_every_decoder_linear_and_matches_hf_on_the_swapped_model(measured):
    measured(2.0)
    model = tiny_llama(seed=4)
    fp32_logits = model(torch.arange(40)[None]).logits[0]
    runner = ModelRunner(model, kernels="torch", linear_dtype="bfloat16")
    assert runner.linear.dtype == "bfloat16" and "taken" in runner.linear.describe()
    assert not decoder_linears(model)  # all 7 per layer swapped
    assert sum(isinstance(m, Bf16Linear) for m in model.modules()) == 7 * len(model.model.layers)
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight.dtype == torch.float32
    ids = torch.arange(40)
    ours = runner.logits(runner.extend(ids, runner.new_cache(40)))
    with torch.no_grad():
        hf = model(ids[None]).logits[0]  # HF's forward runs the same swapped modules
    assert (ours - hf).abs().max() < 1e-4
    gap = (ours - fp32_logits).abs().max()
    assert 0 < gap < 0.1 * fp32_logits.abs().max()  # a precision change, not another model


def test_not_taken_where_bf16_measures_slower(measured):
    measured(0.6)
    model = tiny_llama(seed=4)
    runner = ModelRunner(model, kernels="torch", linear_dtype="bfloat16")
    assert runner.linear.dtype == "float32" and "kept float32" in runner.linear.describe()
    assert len(decoder_linears(model)) == 7 * len(model.model.layers)
    assert runner.fingerprint == ModelRunner(tiny_llama(seed=4), kernels="torch").fingerprint


def test_bf16_linears_key_their_kv_apart(measured):
    measured(2.0)
    fp32 = ModelRunner(tiny_llama(seed=4), kernels="torch")
    mixed = ModelRunner(tiny_llama(seed=4), kernels="torch", linear_dtype="bfloat16")
    assert fp32.fingerprint != mixed.fingerprint


def test_bf16_linears_keep_the_models_profiled_critical_layers(measured, tmp_path):
    """qcfuse's critical layers were profiled on the model; bf16 GEMMs do not change which layers they are, so the
    profile stored under the model's fingerprint still applies (before: the unprofiled fallback ran)."""
    measured(2.0)
    fp32 = ModelRunner(tiny_llama(seed=4), kernels="torch")
    update_profile(fp32.fingerprint, tmp_path, critical_layers=[0])
    assert critical_layers(fp32, (), tmp_path) == (0,) != fallback_layers(fp32.n_layers)
    mixed = ModelRunner(tiny_llama(seed=4), kernels="torch", linear_dtype="bfloat16")
    assert mixed.profile_fingerprint == fp32.fingerprint == fp32.profile_fingerprint != mixed.fingerprint
    assert critical_layers(mixed, (), tmp_path) == (0,)
    update_profile(mixed.fingerprint, tmp_path, critical_layers=[1])  # one profiled with bf16 linears comes first
    assert critical_layers(mixed, (), tmp_path) == (1,)


def test_only_an_fp32_model_takes_it():
    bf16 = copy.deepcopy(tiny_llama(seed=4)).to(torch.bfloat16)
    assert apply_linear_dtype(bf16, "bfloat16")[0].speedup is None  # already bf16: nothing to do
    with pytest.raises(ValueError, match="linear_dtype"):
        apply_linear_dtype(bf16, "float32")
    with pytest.raises(ValidationError, match="linear_dtype"):
        EngineConfig(dtype="bfloat16", linear_dtype="bfloat16")
    assert EngineConfig(linear_dtype="bfloat16").linear_dtype == "bfloat16"
    with pytest.raises(ValidationError, match="decode_linear_dtype"):
        EngineConfig(decode_linear_dtype="bfloat16")  # bf16 decode after an fp32 prefill: not a split it has
    with pytest.raises(ValueError, match="decode_linear_dtype"):
        apply_linear_dtype(tiny_llama(seed=4), "float32", "bfloat16")


def test_bf16_prefill_fp32_decode_runs_each_stack_and_keys_its_kv_apart(measured):
    """decode_linear_dtype="float32": the prefill runs the bf16 engine's layers, the decode steps the fp32 model's,
    and the KV key differs from both engines' (its stored answers' KV is decoded in fp32)."""
    measured(2.0)
    fp32 = ModelRunner(tiny_llama(seed=4), kernels="torch")
    bf16 = ModelRunner(tiny_llama(seed=4), kernels="torch", linear_dtype="bfloat16")
    model = tiny_llama(seed=4)
    split = ModelRunner(model, kernels="torch", linear_dtype="bfloat16", decode_linear_dtype="float32")
    assert split.linear.split and "decode in float32" in split.linear.describe()
    assert len(decoder_linears(model)) == 7 * len(model.model.layers)  # the model keeps its fp32 linears
    assert sum(isinstance(m, Bf16Linear) for m in split.layers.modules()) == 7 * split.n_layers
    assert len({fp32.fingerprint, bf16.fingerprint, split.fingerprint}) == 3
    assert split.profile_fingerprint == fp32.fingerprint
    ids, token = torch.arange(30), torch.tensor([7])
    caches = {}
    for name, r in (("fp32", fp32), ("bf16", bf16), ("split", split)):
        cache = r.new_cache(32)
        prefill = r.logits(r.extend(ids, cache))
        caches[name] = (prefill, cache)
    assert torch.equal(caches["split"][0], caches["bf16"][0])  # the prefill: the bf16 engine's, bit for bit
    assert torch.equal(caches["split"][1].keys[:, :, :30], caches["bf16"][1].keys[:, :, :30])
    assert (caches["split"][0] - caches["fp32"][0]).abs().max() > 0
    cache = fp32.new_cache(32)  # decode over one cache: the split runner's step is the fp32 runner's
    cache.write(slice(None), slice(0, 30), caches["bf16"][1].keys[:, :, :30], caches["bf16"][1].values[:, :, :30])
    twin = fp32.new_cache(32)
    twin.write(slice(None), slice(0, 30), cache.keys[:, :, :30], cache.values[:, :, :30])
    assert torch.equal(split.decode_step(token, cache), fp32.decode_step(token, twin))
    cache.truncate(30)
    twin.truncate(30)
    assert not torch.equal(bf16.decode_step(token, cache), fp32.decode_step(token, twin))  # bf16's step differs


def test_the_flag_and_the_environment_reach_the_config(monkeypatch):
    args = engine_flags().parse_args(["--linear-dtype", "bfloat16"])
    assert load_config(None, flag_layer(args)).linear_dtype == "bfloat16"
    monkeypatch.setenv("CHUNKCACHE_LINEAR_DTYPE", "bfloat16")
    assert load_config().linear_dtype == "bfloat16"
    monkeypatch.setenv("CHUNKCACHE_LINEAR_DTYPE", "float8")
    with pytest.raises(Exception, match="linear_dtype"):
        load_config()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's flags() sets TF32 too
def test_torchs_own_bf16_gemm_measures_slower_and_keeps_float32():
    """With oneDNN off, bf16 GEMMs take torch's own kernel: the path of a CPU that fails torch's oneDNN bf16
    check (no AVX-512), measured for real here (about 0.1x fp32 on the tiny model's widest layer)."""
    model = tiny_llama(seed=4)
    with torch.backends.mkldnn.flags(enabled=False):
        runner = ModelRunner(model, kernels="torch", linear_dtype="bfloat16")
    assert runner.linear.dtype == "float32" and runner.linear.speedup < linear.MIN_SPEEDUP
    assert len(decoder_linears(model)) == 7 * len(model.model.layers)


def test_the_probe_measures_a_ratio_on_this_machine():
    ratio = bf16_speedup(torch.nn.Linear(128, 256), rounds=3, calls=2)
    assert 0.01 < ratio < 100
