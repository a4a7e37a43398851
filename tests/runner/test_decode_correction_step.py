"""Decode-time correction (runner/decode.py): K prompt positions per step in position order, then the generated
tokens, each batch in the same forward as the step's token; once done the cache is exactly full prefill's."""

import math

import pytest
import torch

from chunkcache.runner.decode import DecodeCorrection, next_logits


def _prompt(n=40, seed=0):
    return torch.randint(4, 256, (n,), generator=torch.Generator().manual_seed(seed))


def _stale(r, prompt, lo):
    """The clean cache of `prompt`, and one whose positions lo.. hold noise K/V (what a bad blend leaves)."""
    clean, stale = r.new_cache(prompt.numel() + 16), r.new_cache(prompt.numel() + 16)
    r.extend(prompt, clean)
    r.extend(prompt, stale)
    g = torch.Generator().manual_seed(1)
    shape = (r.n_layers, r.n_kv_heads, prompt.numel() - lo, r.head_dim)
    stale.write(slice(None), slice(lo, prompt.numel()), torch.randn(shape, generator=g),
                torch.randn(shape, generator=g))
    return clean, stale


@pytest.mark.parametrize("per_step", [7, 30, 64])
def test_the_schedule_ends_in_full_prefills_cache_and_logits(tiny_runner, per_step):
    r, prompt, lo = tiny_runner, _prompt(), 10
    clean, stale = _stale(r, prompt, lo)
    corr = DecodeCorrection(prompt, lo, per_step)
    exact_from = math.ceil((prompt.numel() - lo) / per_step)  # the step that recomputes the generated tokens too
    for step, tok in enumerate(torch.randint(4, 256, (8,), generator=torch.Generator().manual_seed(2)), start=1):
        got = next_logits(r, tok.view(1), stale, corr)
        want = r.decode_step(tok.view(1), clean)
        if step >= exact_from:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            n = clean.length
            torch.testing.assert_close(stale.keys[:, :, :n], clean.keys[:, :, :n], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(stale.values[:, :, :n], clean.values[:, :, :n], atol=1e-5, rtol=1e-5)
        else:
            assert (got - want).abs().max() > 1e-3  # still the stale cache's answer
    assert corr.done and corr.pending == 0 and stale.length == clean.length == 48


def test_take_walks_the_prompt_then_the_generated_tokens_once():
    corr = DecodeCorrection(torch.arange(100, 120), 5, 6)
    copy = corr.fresh()
    steps = [corr.take(torch.tensor([t])) for t in (1, 2, 3, 4)]
    assert [p.tolist() for _, p in steps[:3]] == [list(range(5, 11)), list(range(11, 17)), [17, 18, 19, 20, 21]]
    assert steps[2][0].tolist() == [117, 118, 119, 1, 2]  # the prompt's last ids, then the tokens fed before
    assert steps[3] is None and corr.done and corr.pending == 0
    assert copy.start == 5 and not copy.done and copy.pending == 15  # fresh(): an independent copy


def test_nothing_to_recompute_is_the_plain_decode_step(tiny_runner):
    r, prompt = tiny_runner, _prompt(seed=4)
    a, b = r.new_cache(48), r.new_cache(48)
    r.extend(prompt, a)
    r.extend(prompt, b)
    corr = DecodeCorrection(prompt, prompt.numel(), per_step=4)
    torch.testing.assert_close(next_logits(r, torch.tensor([9]), a, corr), r.decode_step(torch.tensor([9]), b))
    assert corr.done


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="decode_correction"):
        DecodeCorrection(torch.arange(4), 0, per_step=0)
    with pytest.raises(ValueError, match="start"):
        DecodeCorrection(torch.arange(4), 5, per_step=2)
