"""Decode-time correction (runner/decode.py): each step recomputes a batch of stale context tokens in the same
forward as its token; correcting every stale position reproduces full prefill exactly."""

import pytest
import torch

from chunkcache.runner.decode import DecodeCorrection, next_logits


def _stale(r, prompt, lo):
    """A cache of `prompt` computed exactly, then positions lo.. overwritten with noise K/V (what a bad blend
    leaves), and the clean cache beside it."""
    clean, stale = r.new_cache(prompt.numel() + 8), r.new_cache(prompt.numel() + 8)
    r.extend(prompt, clean)
    r.extend(prompt, stale)
    g = torch.Generator().manual_seed(1)
    n = prompt.numel() - lo
    shape = (r.n_layers, r.n_kv_heads, n, r.head_dim)
    stale.write(slice(None), slice(lo, prompt.numel()), torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return clean, stale


def _prompt(n=40, seed=0):
    return torch.randint(4, 256, (n,), generator=torch.Generator().manual_seed(seed))


def test_one_batch_of_every_stale_position_reproduces_full_prefill(tiny_runner):
    r, prompt, tok = tiny_runner, _prompt(), torch.tensor([77])
    clean, stale = _stale(r, prompt, 10)
    want = r.logits(r.extend(tok, clean)[-1:])[0]
    queue = torch.randperm(30, generator=torch.Generator().manual_seed(2)) + 10  # any order: one batch, sorted
    corr = DecodeCorrection(prompt, queue, per_step=30)
    got = next_logits(r, tok, stale, corr)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stale.keys[:, :, :41], clean.keys[:, :, :41], atol=1e-5, rtol=1e-5)
    assert corr.pending.numel() == 0 and stale.length == 41


def test_batches_in_position_order_converge_to_full_prefill_over_steps(tiny_runner):
    r, prompt = tiny_runner, _prompt(seed=3)
    clean, stale = _stale(r, prompt, 8)
    corr = DecodeCorrection(prompt, torch.arange(8, 40), per_step=9)
    before = (stale.keys[:, :, 8:40] - clean.keys[:, :, 8:40]).abs().amax()
    for tok in (5, 6, 7, 8):  # 9 + 9 + 9 + 5 positions
        next_logits(r, torch.tensor([tok]), stale, corr)
    assert corr.pending.numel() == 0
    torch.testing.assert_close(stale.keys[:, :, :40], clean.keys[:, :, :40], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stale.values[:, :, :40], clean.values[:, :, :40], atol=1e-5, rtol=1e-5)
    assert before > 0.1


def test_an_empty_queue_is_the_plain_decode_step(tiny_runner):
    r, prompt = tiny_runner, _prompt(seed=4)
    a, b = r.new_cache(48), r.new_cache(48)
    r.extend(prompt, a)
    r.extend(prompt, b)
    corr = DecodeCorrection(prompt, torch.zeros(0, dtype=torch.int64), per_step=4)
    torch.testing.assert_close(next_logits(r, torch.tensor([9]), a, corr), r.decode_step(torch.tensor([9]), b))


def test_take_pops_the_queue_best_first_each_batch_in_position_order():
    corr = DecodeCorrection(torch.arange(20), torch.tensor([7, 3, 9, 1, 5]), per_step=2)
    copy = corr.fresh()
    assert [corr.take().tolist() for _ in range(4)] == [[3, 7], [1, 9], [5], []]
    assert copy.pending.tolist() == [7, 3, 9, 1, 5]  # fresh(): an independent copy of the queue


def test_per_step_below_one_is_refused():
    with pytest.raises(ValueError, match="decode_correction"):
        DecodeCorrection(torch.arange(4), torch.arange(2), per_step=0)
