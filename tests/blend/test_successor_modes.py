"""The published successors of CacheBlend as modes (epic, ape, query, prophet) and chunkcache's blend,
on the tiny random llama: exact at full budget, each selecting what its rule says."""

import math

import pytest
import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.blend.modes import BLEND_HEAD_SHARE
from chunkcache.blend.probe import suffix_attention_by_layer
from chunkcache.blend.request import BlendRequest
from chunkcache.blend.selection import top_tokens
from chunkcache.kernels.ape_attention import ContextTemper, ape_attention_ref
from chunkcache.kernels.sparse_attention import plan_sparse_attention

PREFIX = (1, 2, 3)


def _request(seed=0, lens=(20, 33, 17, 25), suffix_len=6):
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in lens]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (suffix_len,), generator=g).tolist())


def _run(blender, req, **cfg):
    return blender.prefill(req, BlendConfig(**cfg))


def _recomputed_positions(blender, req, res):
    """Candidate positions whose last-layer K differ from the naive cache (= recomputed ones)."""
    naive = _run(blender, req, mode="naive")
    last = blender.runner.n_layers - 1
    lo = len(PREFIX) + len(req.chunks[0])  # chunk 0 sits behind the exact prefix: never a candidate
    diff = (res.cache.keys[last, :, lo:req.suffix_start] - naive.cache.keys[last, :, lo:req.suffix_start]).abs()
    return (diff.amax(dim=(0, 2)) > 1e-6).nonzero().flatten() + lo


def _suffix_attention(blender, req):
    """Per-layer attention [L, suffix_start] of the suffix over the naive merged cache, computed independently."""
    naive = _run(blender, req, mode="naive")
    naive.cache.truncate(req.suffix_start)
    ids = torch.tensor(req.token_ids())
    return suffix_attention_by_layer(blender.runner, naive.cache, ids[req.suffix_start:])


@pytest.mark.parametrize("mode", ["query", "prophet", "blend", "adaptive"])
def test_full_budget_reproduces_full_prefill(tiny_blender, mode):
    req = _request()
    full = _run(tiny_blender, req, mode="full")
    res = _run(tiny_blender, req, mode=mode, recompute_ratio=1.0, adaptive_mass=1.0)
    assert (res.logits - full.logits).abs().max().item() < 1e-4
    n = req.num_tokens
    torch.testing.assert_close(res.cache.keys[:, :, :n], full.cache.keys[:, :, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res.cache.values[:, :, :n], full.cache.values[:, :, :n], atol=1e-4, rtol=1e-4)


def test_epic_with_k_over_chunk_length_reproduces_full_prefill(tiny_blender):
    req = _request(seed=1)
    full = _run(tiny_blender, req, mode="full")
    res = _run(tiny_blender, req, mode="epic", epic_k=max(map(len, req.chunks)))
    assert (res.logits - full.logits).abs().max().item() < 1e-4
    n = req.num_tokens
    torch.testing.assert_close(res.cache.keys[:, :, :n], full.cache.keys[:, :, :n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 5, 18])
def test_epic_recomputes_the_first_k_tokens_of_every_chunk(tiny_blender, k):
    req = _request(seed=2)
    res = _run(tiny_blender, req, mode="epic", epic_k=k, recompute_ratio=0.0)  # epic ignores the ratio
    offsets = req.chunk_offsets
    want = [o + i for c, o in zip(req.chunks[1:], offsets[1:], strict=True) for i in range(min(k, len(c)))]
    assert res.stats.recomputed_tokens == len(want)
    assert _recomputed_positions(tiny_blender, req, res).tolist() == want


def test_epic_k_zero_matches_the_ratio_budget(tiny_blender):
    req = _request(seed=3)
    res = _run(tiny_blender, req, mode="epic", epic_k=0, recompute_ratio=0.3)
    k = round(round(0.3 * req.context_len) / (len(req.chunks) - 1))
    assert res.stats.recomputed_tokens == sum(min(k, len(c)) for c in req.chunks[1:])


def test_ape_at_unit_temperature_and_scale_is_naive(tiny_blender):
    req = _request(seed=4)
    naive = _run(tiny_blender, req, mode="naive")
    ape = _run(tiny_blender, req, mode="ape", ape_temperature=1.0, ape_scale=1.0)
    assert ape.stats.recomputed_tokens == 0
    assert (ape.logits - naive.logits).abs().max().item() < 1e-4
    n = req.num_tokens
    torch.testing.assert_close(ape.cache.keys[:, :, :n], naive.cache.keys[:, :, :n], atol=1e-5, rtol=1e-5)
    tempered = _run(tiny_blender, req, mode="ape", ape_temperature=0.5, ape_scale=0.5)
    assert (tempered.logits - naive.logits).abs().max().item() > 1e-3  # the hook does act


def test_ape_attention_equals_the_three_group_merge():
    """Per-key tempered logits == APE's merge: softmax within prefix / contexts (logits / T) / query, then the
    groups weighted by softmax of (LSE_prefix, T * LSE_ctx(l / T) + log S, LSE_query)."""
    g = torch.Generator().manual_seed(0)
    n_heads, n_kv, d, c0, c1, n = 4, 2, 8, 3, 20, 26
    q = torch.randn(n_heads, n - c1, d, generator=g)
    k, v = torch.randn(n_kv, n, d, generator=g), torch.randn(n_kv, n, d, generator=g)
    temper = ContextTemper(c0, c1, temperature=0.7, scale=0.6)
    plan = plan_sparse_attention(torch.arange(c1, n), n, temper=temper)
    got = ape_attention_ref(q, k, v, plan, 0.5, temper)
    kk, vv = k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)
    logits = (q @ kk.transpose(1, 2)) * 0.5  # [h, m, n]
    causal = torch.arange(n)[None, :] <= torch.arange(c1, n)[:, None]
    logits = logits.masked_fill(~causal, float("-inf"))
    groups = [(slice(0, c0), 1.0, 0.0), (slice(c0, c1), 0.7, math.log(0.6)), (slice(c1, n), 1.0, 0.0)]
    outs, weights = [], []
    for sl, t, bias in groups:
        part = logits[..., sl] / t
        outs.append(part.softmax(-1) @ vv[:, sl])
        weights.append(t * part.logsumexp(-1) + bias)
    w = torch.stack(weights, -1).softmax(-1)  # [h, m, 3]
    want = sum(w[..., i, None] * outs[i] for i in range(3))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_query_keeps_the_tokens_the_question_attends_most(tiny_blender):
    req = _request(seed=5)
    lo = len(PREFIX) + len(req.chunks[0])
    mass = _suffix_attention(tiny_blender, req).sum(0)[lo:]
    res = _run(tiny_blender, req, mode="query", recompute_ratio=0.2)
    budget = round(0.2 * req.context_len)
    assert res.stats.recomputed_tokens == budget
    assert _recomputed_positions(tiny_blender, req, res).tolist() == (top_tokens(mass, budget) + lo).tolist()


def test_prophet_keeps_the_top_of_the_layer_fused_attention(tiny_blender):
    req = _request(seed=6)
    lo = len(PREFIX) + len(req.chunks[0])
    mass = _suffix_attention(tiny_blender, req)[:, lo:]
    fused = (mass / mass.sum(-1, keepdim=True)).amax(0)
    res = _run(tiny_blender, req, mode="prophet", recompute_ratio=0.2)
    budget = round(0.2 * req.context_len)
    assert res.stats.recomputed_tokens == budget
    assert _recomputed_positions(tiny_blender, req, res).tolist() == (top_tokens(fused, budget) + lo).tolist()


@pytest.mark.parametrize("ratio,layers", [(0.2, ()), (0.4, ()), (0.2, (0, 2)), (0.4, (1,))])
def test_blend_keeps_the_chunk_heads_then_the_tokens_the_question_attends_most(tiny_blender, ratio, layers):
    """Half the budget as the first k tokens of every candidate chunk, the rest by the suffix's attention
    summed over score_layers (empty: every layer)."""
    req = _request(seed=7)
    lo = len(PREFIX) + len(req.chunks[0])  # the first chunk is exact (precomputed behind the prefix)
    budget = round(ratio * req.context_len)
    k = max(1, round(budget * BLEND_HEAD_SHARE / (len(req.chunks) - 1)))
    heads = {o + i for o, c in zip(req.chunk_offsets[1:], req.chunks[1:], strict=True) for i in range(min(k, len(c)))}
    mass = _suffix_attention(tiny_blender, req)[list(layers) or slice(None)].sum(0)[lo:]
    others = [int(p) + lo for p in mass.argsort(descending=True) if int(p) + lo not in heads]
    want = sorted(heads | set(others[:budget - len(heads)]))
    res = _run(tiny_blender, req, mode="blend", recompute_ratio=ratio, score_layers=layers)
    assert res.stats.recomputed_tokens == budget
    assert _recomputed_positions(tiny_blender, req, res).tolist() == want
    query = _run(tiny_blender, req, mode="query", recompute_ratio=ratio)
    assert not torch.equal(query.logits, res.logits)  # the heads do change the choice


def test_suffix_attention_stops_at_the_depth_asked(tiny_blender):
    """depth d gives the first d layers' rows of the full-depth probe; a depth the model lacks is refused."""
    req = _request(seed=8)
    full = _suffix_attention(tiny_blender, req)
    naive = _run(tiny_blender, req, mode="naive")
    naive.cache.truncate(req.suffix_start)
    ids = torch.tensor(req.token_ids())[req.suffix_start:]
    got = suffix_attention_by_layer(tiny_blender.runner, naive.cache, ids, depth=2)
    assert got.shape == (2, req.suffix_start)
    torch.testing.assert_close(got, full[:2])
    with pytest.raises(ValueError, match="depth"):
        suffix_attention_by_layer(tiny_blender.runner, naive.cache, ids, depth=tiny_blender.runner.n_layers + 1)


def test_blend_score_layers_out_of_range_names_the_field(tiny_blender):
    with pytest.raises(ValueError, match="score_layers"):
        _run(tiny_blender, _request(), mode="blend", recompute_ratio=0.2, score_layers=(tiny_blender.runner.n_layers,))
    with pytest.raises(ValueError, match="score_layers"):
        BlendConfig(score_layers=(2, 1))


def test_blend_loads_only_the_layers_it_scores_before_selecting(tiny_blender):
    """With score_layers ending at layer 1, the selection asks for layers 0..1 only (the rest load under the
    recompute) and never for every layer."""
    from chunkcache.blend.modes import Candidates, select

    req = _request(seed=9)
    naive = _run(tiny_blender, req, mode="naive")
    naive.cache.truncate(req.suffix_start)
    asked = []

    def load_all():
        raise AssertionError("blend with score_layers loaded every layer before selecting")

    placed = len(PREFIX) + len(req.chunks[0])
    cfg = BlendConfig(mode="blend", recompute_ratio=0.2, score_layers=(0, 1))
    c = Candidates(tiny_blender.runner, naive.cache, torch.tensor(req.token_ids()), req, cfg, placed,
                   req.suffix_start, round(0.2 * req.context_len), load_all, load_to=asked.append)
    sel = select(c)
    assert asked == [1]
    assert sel.keep.numel() == c.budget
