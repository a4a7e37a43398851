"""Blending modes on a tiny random llama: exact where the method is exact, budgets honoured."""

import pytest
import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest

PREFIX = (1, 2, 3)


def _request(n_chunks=3, seed=0, chunk_len=(20, 33, 17, 25), suffix_len=6):
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (chunk_len[i % 4],), generator=g).tolist()) for i in range(n_chunks)]
    suffix = torch.randint(4, 256, (suffix_len,), generator=g).tolist()
    return BlendRequest.of(PREFIX, chunks, suffix)


def _logits(blender, req, **cfg):
    return blender.prefill(req, BlendConfig(**cfg))


def _kl(p_logits, q_logits):
    return torch.nn.functional.kl_div(q_logits.log_softmax(-1), p_logits.log_softmax(-1), log_target=True,
                                      reduction="sum").item()


def test_recompute_ratio_one_reproduces_full(tiny_blender):
    req = _request()
    full = _logits(tiny_blender, req, mode="full")
    blend = _logits(tiny_blender, req, mode="cacheblend", recompute_ratio=1.0)
    assert (blend.logits - full.logits).abs().max().item() < 1e-4
    n = req.num_tokens
    torch.testing.assert_close(blend.cache.keys[:, :, :n], full.cache.keys[:, :, :n], atol=1e-4, rtol=1e-4)
    # chunk 0 sits behind the exact prefix and is never a candidate; every other context token is recomputed
    assert blend.stats.recomputed_tokens == req.context_len - len(req.chunks[0])


def test_prefix_mode_is_exact(tiny_blender):
    """The prefix and the first chunk (precomputed behind this very prefix) are reused exactly."""
    req = _request()
    full = _logits(tiny_blender, req, mode="full")
    pre = _logits(tiny_blender, req, mode="prefix")
    assert (pre.logits - full.logits).abs().max().item() < 1e-4
    assert pre.stats.reused_tokens == len(PREFIX) + len(req.chunks[0])
    assert pre.stats.recomputed_tokens == req.context_len - len(req.chunks[0])


def test_single_chunk_naive_is_exact(tiny_blender):
    req = _request(n_chunks=1)
    full = _logits(tiny_blender, req, mode="full")
    naive = _logits(tiny_blender, req, mode="naive")
    assert (naive.logits - full.logits).abs().max().item() < 1e-4
    assert naive.stats.recomputed_tokens == 0


def test_naive_reuses_everything_but_the_suffix(tiny_blender):
    req = _request()
    naive = _logits(tiny_blender, req, mode="naive")
    s = naive.stats
    assert s.recomputed_tokens == 0 and s.reused_tokens == req.num_tokens - len(req.suffix_ids)
    assert s.chunk_misses == 1 + len(req.chunks)  # prefix + chunks computed on first use
    again = _logits(tiny_blender, req, mode="naive")
    assert again.stats.chunk_hits == 1 + len(req.chunks) and again.stats.chunk_misses == 0
    torch.testing.assert_close(again.logits, naive.logits)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.6])
def test_cacheblend_budget_and_fidelity_between_naive_and_full(tiny_blender, ratio):
    req = _request(seed=1)
    full = _logits(tiny_blender, req, mode="full")
    naive = _logits(tiny_blender, req, mode="naive")
    blend = _logits(tiny_blender, req, mode="cacheblend", recompute_ratio=ratio)
    assert blend.stats.recomputed_tokens == round(ratio * req.context_len)
    assert blend.stats.reused_tokens == req.num_tokens - len(req.suffix_ids) - blend.stats.recomputed_tokens
    if ratio >= 0.3:
        assert _kl(full.logits, blend.logits) < _kl(full.logits, naive.logits)


def test_recomputed_tokens_carry_fresh_kv_and_others_keep_cached(tiny_blender):
    """After the check layer, selected tokens hold fresh K/V (written back); the rest keep the chunk KV."""
    req = _request(seed=2)
    naive = _logits(tiny_blender, req, mode="naive")
    blend = _logits(tiny_blender, req, mode="cacheblend", recompute_ratio=0.2)
    last = tiny_blender.runner.n_layers - 1
    ctx = slice(len(PREFIX) + len(req.chunks[0]), req.suffix_start)  # chunks placed by shift
    changed = (blend.cache.keys[last, :, ctx] - naive.cache.keys[last, :, ctx]).abs().amax(dim=(0, 2)) > 1e-6
    assert int(changed.sum()) == blend.stats.recomputed_tokens


def test_adaptive_picks_at_most_the_budget(tiny_blender):
    req = _request(seed=3)
    res = _logits(tiny_blender, req, mode="adaptive", recompute_ratio=0.5, adaptive_mass=0.3)
    budget = round(0.5 * req.context_len)
    assert 0 < res.stats.recomputed_tokens <= budget
    more = _logits(tiny_blender, req, mode="adaptive", recompute_ratio=0.5, adaptive_mass=0.9)
    assert more.stats.recomputed_tokens >= res.stats.recomputed_tokens


@pytest.mark.parametrize("selection", ["random", "attention", "attention_deviation"])
def test_other_selections_honour_the_budget(tiny_blender, selection):
    req = _request(seed=4)
    res = _logits(tiny_blender, req, mode="cacheblend", recompute_ratio=0.25, selection=selection)
    assert res.stats.recomputed_tokens == round(0.25 * req.context_len)
    assert torch.isfinite(res.logits).all()


def test_gradual_filtering_over_two_check_layers(tiny_blender):
    req = _request(seed=5)
    full = _logits(tiny_blender, req, mode="full")
    res = _logits(tiny_blender, req, mode="cacheblend", recompute_ratio=1.0, check_layers=(1, 2))
    assert (res.logits - full.logits).abs().max().item() < 1e-4
    res = _logits(tiny_blender, req, mode="cacheblend", recompute_ratio=0.2, check_layers=(1, 2))
    assert res.stats.recomputed_tokens == round(0.2 * req.context_len)


def test_prompt_over_context_is_refused(tiny_blender):
    req = BlendRequest.of(PREFIX, [tuple(range(4, 200)), tuple(range(4, 200)), tuple(range(4, 200))], [5, 6])
    with pytest.raises(ValueError, match="exceeds the model context"):
        tiny_blender.prefill(req, BlendConfig())


@pytest.mark.parametrize("mode", ["query", "prophet", "prophet2", "qcfuse", "fusion", "fusionqc", "blend"])
def test_question_scored_modes_at_ratio_zero_skip_the_scoring_pass_and_equal_naive(tiny_blender, monkeypatch, mode):
    """A zero budget picks nothing whatever the scores: no question pass runs, and the result is naive's."""
    req = _request()
    naive = _logits(tiny_blender, req, mode="naive")

    def no_pass(*args, **kwargs):
        raise AssertionError("the question's scoring pass ran with a zero budget")

    monkeypatch.setattr("chunkcache.blend.modes.suffix_attention_by_layer", no_pass)
    monkeypatch.setattr("chunkcache.blend.modes.view_importance", no_pass)
    res = _logits(tiny_blender, req, mode=mode, recompute_ratio=0.0)
    assert res.stats.recomputed_tokens == 0 and res.stats.reused_tokens == naive.stats.reused_tokens
    torch.testing.assert_close(res.logits, naive.logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError, match="zero budget"):  # the patch is live: a non-zero budget reaches it
        _logits(tiny_blender, req, mode=mode, recompute_ratio=0.1)
