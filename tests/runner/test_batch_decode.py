"""The batched decode step computes, per sequence, what the single-sequence decode step computes."""

import pytest
import torch

from chunkcache.runner.batch import decode_batch
from chunkcache.runner.runner import ModelRunner
from tiny_models import tiny_llama


@pytest.fixture(scope="module")
def runner64() -> ModelRunner:
    return ModelRunner(tiny_llama(seed=3).to(torch.float64), kernels="torch")


def _prefilled(r: ModelRunner, lengths: list[int], seed: int, capacity_extra: int) -> list:
    g = torch.Generator().manual_seed(seed)
    caches = []
    for n in lengths:
        c = r.new_cache(n + capacity_extra)
        r.extend(torch.randint(4, 256, (n,), generator=g), c)
        caches.append(c)
    return caches


def test_batch_equals_single_steps_with_mixed_lengths(runner64):
    r = runner64
    lengths = [5, 41, 1, 17, 64]
    batched = _prefilled(r, lengths, seed=0, capacity_extra=2)  # caches grow past their capacity on step 3
    single = _prefilled(r, lengths, seed=0, capacity_extra=2)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        tokens = torch.randint(4, 256, (len(lengths),), generator=g)
        logits = decode_batch(r, tokens, batched)
        assert logits.shape == (len(lengths), 256) and logits.dtype == torch.float32
        for b, cache in enumerate(single):
            ref = r.decode_step(tokens[b:b + 1], cache)
            torch.testing.assert_close(logits[b], ref, atol=1e-6, rtol=0)
            assert batched[b].length == cache.length
    for a, s in zip(batched, single, strict=True):
        n = s.length
        torch.testing.assert_close(a.keys[:, :, :n], s.keys[:, :, :n], atol=1e-12, rtol=0)
        torch.testing.assert_close(a.values[:, :, :n], s.values[:, :, :n], atol=1e-12, rtol=0)


def test_rows_are_independent(runner64):
    """A row's logits do not depend on which other sequences share the step (a wrong row order would)."""
    r = runner64
    a = _prefilled(r, [9, 30], seed=2, capacity_extra=1)
    tokens = torch.tensor([7, 11])
    both = decode_batch(r, tokens, a)
    alone = decode_batch(r, tokens[1:], _prefilled(r, [9, 30], seed=2, capacity_extra=1)[1:])
    torch.testing.assert_close(both[1], alone[0], atol=1e-10, rtol=0)
    assert (both[0] - both[1]).abs().max() > 1e-3  # different sequences give different logits


def test_wrong_token_count_names_it(runner64):
    caches = _prefilled(runner64, [3, 4], seed=4, capacity_extra=1)
    with pytest.raises(ValueError, match="tokens of shape"):
        decode_batch(runner64, torch.tensor([1, 2, 3]), caches)
