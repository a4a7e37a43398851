"""BlendConfig.decode_correction on the tiny random llama: the prefill is unchanged, decode recomputes every position
after the exact prefix, and from the step that finishes the schedule on, teacher-forced logits are full prefill's."""

import math

import pytest
import torch

from tiny_models import tiny_llama

from chunkcache.bench.teacher_forcing import greedy, tf_logits
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner import linear
from chunkcache.runner.decode import next_logits
from chunkcache.runner.runner import ModelRunner

PREFIX = (1, 2, 3)


def _request(seed=0, lens=(20, 33, 17, 25), suffix_len=6):
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in lens]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (suffix_len,), generator=g).tolist())


@pytest.mark.parametrize("mode", ["query", "blend", "cacheblend", "naive", "prophet2", "ape", "full", "prefix"])
def test_the_prefill_is_unchanged_and_decode_starts_after_the_exact_prefix(tiny_blender, mode):
    req = _request()
    plain = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.2))
    res = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.2, decode_correction=8))
    assert plain.correction is None and plain.stats.decode_pending == 0
    assert torch.equal(plain.logits, res.logits)
    assert torch.equal(plain.cache.keys[:, :, :req.num_tokens], res.cache.keys[:, :, :req.num_tokens])
    if mode in ("full", "prefix"):  # nothing placed from cache after the exact prefix: nothing to correct
        assert res.correction is None and res.stats.decode_pending == 0
        return
    exact = len(PREFIX) + len(req.chunks[0])  # chunk 0 was precomputed behind this very prefix
    assert res.correction.start == exact and res.correction.per_step == 8
    assert res.stats.decode_pending == req.num_tokens - exact
    assert res.correction.ids.tolist() == list(req.token_ids())


def _full_reference(blender, req, n):
    """Full prefill's greedy answer [n] and its teacher-forced logits [n, vocab]."""
    r = blender.runner
    full = blender.prefill(req, BlendConfig(mode="full"), reserve=n + 2)
    answer = greedy(r, full.cache, full.logits, n, set())
    full.cache.truncate(req.num_tokens)
    return answer, tf_logits(r, full.cache, full.logits, answer)


@pytest.mark.parametrize(("mode", "per_step"), [("query", 16), ("naive", 40), ("blend", 200)])
def test_from_the_last_scheduled_step_decoding_is_full_prefills(tiny_blender, mode, per_step):
    r = tiny_blender.runner
    req = _request(seed=3)
    answer, ref = _full_reference(tiny_blender, req, 10)
    res = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.1, decode_correction=per_step),
                               reserve=12)
    before = res.cache.keys[:, :, :req.num_tokens].clone()
    got = tf_logits(r, res.cache, res.logits, answer, correction=res.correction)
    assert torch.equal(res.cache.keys[:, :, :req.num_tokens], before) and res.cache.length == req.num_tokens
    exact_from = math.ceil(res.stats.decode_pending / per_step)  # row i is predicted at decode step i
    assert (got[0] - ref[0]).abs().max() > 1e-4  # the prefill's own approximation
    torch.testing.assert_close(got[exact_from:], ref[exact_from:], atol=1e-4, rtol=1e-4)
    if exact_from > 1:
        assert (got[1] - ref[1]).abs().max() > 1e-4


@pytest.mark.parametrize(("mode", "steps"), [("query", 1), ("blend", 2), ("naive", 3)])
def test_a_step_count_spreads_the_correction_over_that_many_steps_whatever_the_prompt(tiny_blender, mode, steps):
    r = tiny_blender.runner
    for seed, lens in ((5, (20, 33, 17, 25)), (6, (40, 61, 9))):
        req = _request(seed=seed, lens=lens)
        answer, ref = _full_reference(tiny_blender, req, 8)
        res = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.1, decode_correction_steps=steps),
                                   reserve=12)
        pending = res.stats.decode_pending
        assert pending == req.num_tokens - len(PREFIX) - lens[0]
        assert res.correction.per_step == math.ceil(pending / steps)
        got = tf_logits(r, res.cache, res.logits, answer, correction=res.correction)
        assert (got[steps - 1] - ref[steps - 1]).abs().max() > 1e-4  # the last step still decoded from the blend
        torch.testing.assert_close(got[steps:], ref[steps:], atol=1e-4, rtol=1e-4)


def test_a_bad_decode_correction_is_refused():
    with pytest.raises(ValueError, match="decode_correction"):
        BlendConfig(decode_correction=-1)
    with pytest.raises(ValueError, match="decode_correction_steps"):
        BlendConfig(decode_correction_steps=-2)
    with pytest.raises(ValueError, match="one, not both"):
        BlendConfig(decode_correction=64, decode_correction_steps=2)
    assert BlendConfig(decode_correction_steps=4).correction_per_step(0) == 1


def test_bf16_prefill_then_fp32_decode_converges_to_the_fp32_models_full_prefill(tiny_blender, monkeypatch):
    """decode_linear_dtype="float32": the prefill (exact prefix included) ran bf16 linears, so the correction starts
    at position 0 and leaves the fp32 model's full-prefill cache: the answer pays bf16 only until it converges."""
    monkeypatch.setattr(linear, "bf16_speedup", lambda layer: 2.0)  # a CPU's bf16 speed, fixed for the test
    runner = ModelRunner(tiny_llama(), linear_dtype="bfloat16", decode_linear_dtype="float32")
    split = Blender(runner, ChunkSource(runner, DictStore(), context_ids=PREFIX))
    req = _request(seed=3)
    answer, ref = _full_reference(tiny_blender, req, 10)  # the fp32 engine's full prefill
    res = split.prefill(req, BlendConfig(mode="blend", recompute_ratio=0.1, decode_correction=40), reserve=12)
    assert res.correction.start == 0 and res.stats.decode_pending == req.num_tokens
    got = tf_logits(runner, res.cache, res.logits, answer, correction=res.correction)
    exact_from = math.ceil(req.num_tokens / 40)
    assert (got[exact_from - 1] - ref[exact_from - 1]).abs().max() > 1e-4
    torch.testing.assert_close(got[exact_from:], ref[exact_from:], atol=1e-4, rtol=1e-4)


def _top_probs(logits):
    return logits.float().softmax(-1).max(-1).values  # [rows]


@pytest.mark.parametrize("mode", ["query", "naive"])
def test_an_unsure_step_finishes_the_correction_and_takes_full_prefills_logits(tiny_blender, mode):
    """K = 8 would need several steps; a gate above the blend's top probability at step 1 finishes it there, so rows
    1.. are full prefill's; a gate below every step's top probability never fires and changes nothing."""
    r = tiny_blender.runner
    req = _request(seed=3)
    answer, ref = _full_reference(tiny_blender, req, 8)
    plain = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.1, decode_correction=8), reserve=10)
    ungated = tf_logits(r, plain.cache, plain.logits, answer, correction=plain.correction)
    assert math.ceil(plain.stats.decode_pending / 8) > 3 and (ungated[1] - ref[1]).abs().max() > 1e-4
    probs = _top_probs(ungated)
    for gate, finishes in ((float(probs[1]) * 1.01, 1), (float(probs[1:].min()) * 0.99, None)):
        res = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.1, decode_correction=8,
                                                    correction_gate=gate), reserve=10)
        assert res.correction.gate == gate and torch.equal(res.logits, plain.logits)  # the first token is not gated
        schedule = res.correction
        got = torch.stack([res.logits] + [next_logits(r, torch.tensor([t]), res.cache, schedule) for t in answer[:-1]])
        assert schedule.finished_at == finishes
        if finishes:
            torch.testing.assert_close(got[1:], ref[1:], atol=1e-4, rtol=1e-4)
        else:
            torch.testing.assert_close(got, ungated, atol=0, rtol=0)


def test_the_gate_is_a_probability_over_a_correction():
    with pytest.raises(ValueError, match="correction_gate"):
        BlendConfig(correction_gate=0.3)  # nothing to gate
    with pytest.raises(ValueError, match="correction_gate must be a probability"):
        BlendConfig(decode_correction=8, correction_gate=1.5)
    assert BlendConfig(decode_correction_steps=2, correction_gate=0.35).correction_gate == 0.35
