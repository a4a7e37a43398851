"""The successors added in issue 21 (qcfuse, prophet2, fusion, fusionqc) on the tiny random llama: exact at full budget,
and each selecting or placing what its rule says, checked against an independent computation."""

import pytest
import torch

from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import DEFAULT_MODE, FUSED_MODES, BlendConfig
from chunkcache.blend.fusion import fuse, fused_contexts, neighbours, precompute_fused, with_fused
from chunkcache.blend.modes import PROPHET_STAGE1_SHARE, _prophet_fused
from chunkcache.blend.probe import suffix_attention_by_layer
from chunkcache.blend.qcfuse import anchor_count, chunk_anchors, view_importance
from chunkcache.blend.request import BlendRequest
from chunkcache.blend.selection import top_tokens
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig
from chunkcache.store.keys import chunk_key

PREFIX = (1, 2, 3)


def _request(seed=0, lens=(20, 33, 17, 25), suffix_len=6, fused=()):
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in lens]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (suffix_len,), generator=g).tolist(), fused=fused)


def _fusion_request(seed=0):
    req = _request(seed)
    vecs = torch.randn(len(req.chunks), 8, generator=torch.Generator().manual_seed(seed))
    return BlendRequest.of(PREFIX, req.chunks, req.suffix_ids, fused=fused_contexts(PREFIX, req.chunks, vecs, 2))


def _recomputed(blender, req, res):
    naive = blender.prefill(req, BlendConfig(mode="naive"))
    last, lo = blender.runner.n_layers - 1, len(PREFIX) + len(req.chunks[0])
    diff = (res.cache.keys[last, :, lo:req.suffix_start] - naive.cache.keys[last, :, lo:req.suffix_start]).abs()
    return (diff.amax(dim=(0, 2)) > 1e-6).nonzero().flatten()  # candidate indices


@pytest.mark.parametrize("mode", ["qcfuse", "prophet2", "fusion", "fusionqc"])
def test_full_budget_reproduces_full_prefill(tiny_blender, mode):
    req = _fusion_request(1)
    full = tiny_blender.prefill(req, BlendConfig(mode="full"))
    res = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=1.0))
    assert (res.logits - full.logits).abs().max().item() < 1e-4
    n = req.num_tokens
    torch.testing.assert_close(res.cache.keys[:, :, :n], full.cache.keys[:, :, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res.cache.values[:, :, :n], full.cache.values[:, :, :n], atol=1e-4, rtol=1e-4)


def test_qcfuse_view_of_every_token_is_the_naive_probe(tiny_blender, naive_cache):
    """With every chunk token an anchor the compressed view is the naive cache: its per-layer importance must
    equal the suffix's attention over the naive cache (probe.py), which checks the view's RoPE re-framing."""
    req, r = _request(2), tiny_blender.runner
    cache = naive_cache(tiny_blender, req)
    ids = torch.tensor(req.token_ids())
    placed, fresh = len(PREFIX) + len(req.chunks[0]), req.suffix_start
    spans = [(o, o + len(c)) for c, o in zip(req.chunks[1:], req.chunk_offsets[1:], strict=True)]
    anchors = [torch.arange(e - s).repeat(r.n_layers, 1) for s, e in spans]
    got = view_importance(r, cache, ids[fresh:], placed, fresh, spans, anchors, (0, 2, 3))
    want = suffix_attention_by_layer(r, naive_cache(tiny_blender, req), ids[fresh:])[:, placed:]
    torch.testing.assert_close(got, want[[0, 2, 3]], atol=1e-5, rtol=1e-4)


def test_qcfuse_anchors_are_the_sinks_and_the_best_scored(tiny_blender, naive_cache):
    req, r = _request(3), tiny_blender.runner
    cache = naive_cache(tiny_blender, req)
    off, length = req.chunk_offsets[1], len(req.chunks[1])
    got = chunk_anchors(r, cache, off, length, 3, 2, ratio=0.3, sinks=4)
    assert got.shape == (3, anchor_count(length, 0.3, 4)) == (3, round(0.3 * length))
    assert (got[:, :4] == torch.arange(4)).all()
    assert (got[:, 1:] > got[:, :-1]).all()
    assert not torch.equal(got[0], got[2])  # per layer


def test_qcfuse_recomputes_the_critical_layers_top_tokens(tiny_blender, naive_cache):
    req, r = _request(4), tiny_blender.runner
    cfg = BlendConfig(mode="qcfuse", recompute_ratio=0.2, critical_layers=(1, 2))
    res = tiny_blender.prefill(req, cfg)
    budget = round(0.2 * req.context_len)
    assert res.stats.recomputed_tokens == budget
    cache = naive_cache(tiny_blender, req)
    ids = torch.tensor(req.token_ids())
    placed, fresh = len(PREFIX) + len(req.chunks[0]), req.suffix_start
    spans = [(o, o + len(c)) for c, o in zip(req.chunks[1:], req.chunk_offsets[1:], strict=True)]
    anchors = [chunk_anchors(r, cache, s, len(c), 4, 2, 0.15, 4)
               for c, (s, _) in zip(req.chunks[1:], spans, strict=True)]
    want = top_tokens(view_importance(r, cache, ids[fresh:], placed, fresh, spans, anchors, (1, 2)).mean(0), budget)
    assert _recomputed(tiny_blender, req, res).tolist() == want.tolist()
    other = tiny_blender.prefill(req, BlendConfig(mode="qcfuse", recompute_ratio=0.2, critical_layers=(3,)))
    assert _recomputed(tiny_blender, req, other).tolist() != want.tolist()  # the layers decide


def test_fusionqc_is_heads_then_qcfuses_selection_over_the_fused_entries(tiny_blender):
    """fusionqc places the fused entries (fusion at ratio 0: its naive cache) and recomputes the first k tokens of
    every candidate chunk (k = half the budget over the chunks), then the tokens qcfuse's rule ranks highest over
    that cache, computed here from the parts; not qcfuse's pick over the plain entries, nor the anchors qcfuse
    remembered for the same chunks' plain entries (run first)."""
    req, r = _fusion_request(7), tiny_blender.runner
    plain = tiny_blender.prefill(req, BlendConfig(mode="qcfuse", recompute_ratio=0.2, critical_layers=(1, 2)))
    res = tiny_blender.prefill(req, BlendConfig(mode="fusionqc", recompute_ratio=0.2, critical_layers=(1, 2)))
    budget = round(0.2 * req.context_len)
    assert res.stats.mode == "fusionqc" and res.stats.recomputed_tokens == budget and not res.stats.fallbacks
    ids = torch.tensor(req.token_ids())
    placed, fresh, last = len(PREFIX) + len(req.chunks[0]), req.suffix_start, r.n_layers - 1
    naive = tiny_blender.prefill(req, BlendConfig(mode="fusion", recompute_ratio=0.0)).cache  # fused entries placed
    recomputed = (res.cache.keys[last, :, placed:fresh] - naive.keys[last, :, placed:fresh]).abs().amax(dim=(0, 2))
    naive.truncate(fresh)
    spans = [(o, o + len(c)) for c, o in zip(req.chunks[1:], req.chunk_offsets[1:], strict=True)]
    anchors = [chunk_anchors(r, naive, s, len(c), 4, 2, 0.15, 4)
               for c, (s, _) in zip(req.chunks[1:], spans, strict=True)]
    score = view_importance(r, naive, ids[fresh:], placed, fresh, spans, anchors, (1, 2)).mean(0)  # [n_cand]
    k = round(budget * 0.5 / len(spans))
    heads = [s - placed + j for s, _ in spans for j in range(k)]
    assert k >= 2 and len(set(top_tokens(score, budget).tolist()) & set(heads)) < len(heads)  # the heads matter
    score[heads] = float("inf")
    want = top_tokens(score, budget)
    assert (recomputed > 1e-6).nonzero().flatten().tolist() == want.tolist()
    assert not torch.allclose(plain.logits, res.logits, atol=1e-4)  # the fused entries, not the plain ones


def test_qcfuse_rejects_a_layer_the_model_lacks(tiny_blender):
    with pytest.raises(ValueError, match="critical_layers"):
        tiny_blender.prefill(_request(), BlendConfig(mode="qcfuse", critical_layers=(9,)))


def test_prophet2_first_stage_is_prophets_half_then_refined(tiny_blender, naive_cache):
    req = _request(5)
    res = tiny_blender.prefill(req, BlendConfig(mode="prophet2", recompute_ratio=0.3))
    budget = round(0.3 * req.context_len)
    assert res.stats.recomputed_tokens == budget
    placed = len(PREFIX) + len(req.chunks[0])
    mass = suffix_attention_by_layer(tiny_blender.runner, naive_cache(tiny_blender, req),
                                     torch.tensor(req.suffix_ids))[:, placed:]
    first = top_tokens(_prophet_fused(mass), round(budget * PROPHET_STAGE1_SHARE))
    got = _recomputed(tiny_blender, req, res)
    assert got.numel() == budget and set(first.tolist()) <= set(got.tolist())
    one = tiny_blender.prefill(req, BlendConfig(mode="prophet", recompute_ratio=0.3))
    one_stage = _recomputed(tiny_blender, req, one)
    assert got.tolist() != one_stage.tolist()


def test_neighbours_and_fused_contexts():
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]])
    assert neighbours(vecs, 2) == [[1, 3], [0, 3], [3, 1], [2, 1]]
    chunks = [(10,), (11, 11), (12,), (13,)]
    assert fused_contexts((1,), chunks, vecs, 2)[0] == (1, 13, 11, 11)  # nearest next to the chunk
    with pytest.raises(ValueError, match="vectors"):
        fused_contexts((1,), chunks, vecs[:3], 2)


def test_fuse_takes_corpus_neighbours_where_given_else_the_requests_own():
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    req = BlendRequest.of((1,), [(10,), (11, 11), (12,)], (2,))
    corpus = [[(20, 20), (21,)], None, []]  # chunk 0: two corpus neighbours, nearest first; chunk 2: none
    fused = fuse(req, (1,), vecs, 1, corpus=corpus).fused
    assert fused[0] == (1, 21, 20, 20)  # nearest (20, 20) next to the chunk
    assert fused[1] == fused_contexts((1,), req.chunks, vecs, 1)[1] == (1, 10)  # not indexed: the request's own
    assert fused[2] == (1,)  # indexed, alone in its corpus: behind the prefix only
    with pytest.raises(ValueError, match="corpus"):
        fuse(req, (1,), vecs, 1, corpus=corpus[:2])


def test_fusion_places_the_fused_entries_and_keeps_the_plain_ones(tiny_runner):
    req = _fusion_request(6)
    store = DictStore()
    source = ChunkSource(tiny_runner, store, PREFIX)
    keys, extra, computed = precompute_fused(source, req.chunks, req.fused)
    assert extra == sum(len(c) - len(PREFIX) for c in req.fused) and computed == len(req.chunks)
    assert keys[1] == chunk_key(tiny_runner.fingerprint, req.fused[1], req.chunks[1]) != source.key(req.chunks[1])
    blender = Blender(tiny_runner, source)
    res = blender.prefill(req, BlendConfig(mode="fusion", recompute_ratio=0.0))
    assert res.stats.chunk_hits >= len(req.chunks) - 1 and res.stats.recomputed_tokens == 0
    i, off, last = 2, req.chunk_offsets[2], tiny_runner.n_layers - 1
    ctx, chunk = req.fused[i], req.chunks[i]
    ref = tiny_runner.new_cache(len(ctx) + len(chunk))
    tiny_runner.extend(torch.tensor(ctx + chunk), ref)  # the chunk computed behind its neighbours, independently
    want_v = ref.values[last, :, len(ctx):]
    torch.testing.assert_close(res.cache.values[last, :, off:off + len(chunk)], want_v, atol=1e-4, rtol=1e-4)
    plain = blender.prefill(req, BlendConfig(mode="query", recompute_ratio=0.0))
    assert not torch.allclose(plain.cache.values[last, :, off:off + len(chunk)], want_v, atol=1e-3)
    assert {source.key(chunk), source.key(chunk, ctx)} <= set(store._items)  # plain and fused: two entries
    assert source.key(ctx, ()) not in store._items  # the one-off fused context is not kept


def test_precompute_fused_with_reuse_keeps_held_entries_and_computes_the_rest(tiny_runner):
    """reuse (the demo, calibrate): an entry the store holds is kept, not recomputed, and costs no extra tokens;
    without it every entry is replaced (what `bench` measures as the ingestion cost)."""
    req = _fusion_request(7)
    store = ChunkStore(StoreConfig.memory_only(1 << 30))
    source = ChunkSource(tiny_runner, store, PREFIX)
    held, _, _ = precompute_fused(source, req.chunks[:2], req.fused[:2])
    before = [store.get(k, tiny_runner.fingerprint) for k in held]
    calls = []
    recompute = source.recompute
    source.recompute = lambda ids, ctx=None: calls.append(ids) or recompute(ids, ctx)
    keys, extra, computed = precompute_fused(source, req.chunks, req.fused, reuse=True)
    assert keys[:2] == held and calls == list(req.chunks[2:]) and computed == len(req.chunks) - 2
    assert extra == sum(len(c) - len(PREFIX) for c in req.fused[2:])
    for k, kv in zip(held, before, strict=True):  # the held entries' KV as they were
        assert torch.equal(store.get(k, tiny_runner.fingerprint).keys, kv.keys)
    calls.clear()
    assert precompute_fused(source, req.chunks, req.fused, reuse=True) == (keys, 0, 0) and not calls
    assert precompute_fused(source, req.chunks, req.fused)[1] == sum(len(c) - len(PREFIX) for c in req.fused)
    assert calls == list(req.chunks)


def test_with_fused_gives_every_mode_the_same_ids_and_fusion_its_entries(tiny_blender):
    req = _request(10)
    vecs = torch.randn(len(req.chunks), 8, generator=torch.Generator().manual_seed(10))
    fused = with_fused(tiny_blender.source, req, vecs)
    assert fused.token_ids() == req.token_ids() and fused.fused == fused_contexts(PREFIX, req.chunks, vecs)
    res = tiny_blender.prefill(fused, BlendConfig(mode="fusion", recompute_ratio=0.1))
    assert res.stats.chunk_misses == 1  # only chunk 0's plain entry (it is placed exact); the fused ones were ready
    assert torch.equal(tiny_blender.prefill(fused, BlendConfig(mode="query")).logits,
                       tiny_blender.prefill(req, BlendConfig(mode="query")).logits)  # other modes ignore them


def test_default_without_fused_contexts_runs_blend_and_says_so(tiny_blender):
    """The default mode (fused) on a request with no corpus to fuse with: exactly blend over the plain entries,
    the stats naming the mode run and the reason."""
    req = _request(3)
    res = tiny_blender.prefill(req, BlendConfig(recompute_ratio=0.2))  # the default mode
    ref = tiny_blender.prefill(req, BlendConfig(mode="blend", recompute_ratio=0.2))
    assert torch.equal(res.logits, ref.logits) and torch.equal(res.cache.keys, ref.cache.keys)
    assert res.stats.mode == "blend" and res.stats.recomputed_tokens == ref.stats.recomputed_tokens > 0
    assert [f.split(":")[0] for f in res.stats.fallbacks] == [DEFAULT_MODE] and not ref.stats.fallbacks
    fused = tiny_blender.prefill(_fusion_request(3), BlendConfig(recompute_ratio=0.2))
    assert DEFAULT_MODE in FUSED_MODES and fused.stats.mode == DEFAULT_MODE and not fused.stats.fallbacks
    assert not torch.equal(fused.logits, res.logits)  # the fused entries were placed, not the plain ones
    with pytest.raises(ValueError, match="fused"):
        _request(fused=((1,),))


def test_fusionqc_without_fused_contexts_runs_blend_and_says_so(tiny_blender):
    req = _request(8)
    res = tiny_blender.prefill(req, BlendConfig(mode="fusionqc", recompute_ratio=0.2))
    ref = tiny_blender.prefill(req, BlendConfig(mode="blend", recompute_ratio=0.2))
    assert torch.equal(res.logits, ref.logits) and torch.equal(res.cache.keys, ref.cache.keys)
    assert res.stats.mode == "blend" and res.stats.recomputed_tokens == ref.stats.recomputed_tokens > 0
    assert res.stats.fallbacks[0].startswith("fusionqc: the request carries no fused contexts")


def test_critical_layer_profile_is_stored_per_model_and_used(tiny_blender, tmp_path, monkeypatch):
    from chunkcache.blend.qcfuse import critical_layers, fallback_layers
    from chunkcache.blend.qcfuse_profile import profile_critical_layers, store_profile

    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    r = tiny_blender.runner
    assert critical_layers(r) == fallback_layers(r.n_layers) == (1, 2, 3)
    prof = profile_critical_layers(r, [_request(8), _request(9)], ratio=0.2, top=2)
    assert len(prof.recall) == r.n_layers and all(0.0 <= x <= 1.0 for x in prof.recall)
    assert prof.ranked[0] == max(range(r.n_layers), key=lambda i: (prof.recall[i], -i))
    assert prof.critical == tuple(sorted(prof.ranked[:2])) and prof.n == 2
    store_profile(r, prof)
    assert critical_layers(r) == prof.critical
    assert critical_layers(r, (0,)) == (0,)  # the request's own layers win
    fused = profile_critical_layers(r, [_fusion_request(8), _fusion_request(9)], ratio=0.2, top=2)
    assert fused.recall != prof.recall  # the same chunks and questions, measured over their fused entries
