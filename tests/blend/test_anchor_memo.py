"""qcfuse's anchor memo on the tiny random llama: a hit serves what was computed, deeper layers are computed
again, and anchors warmed at ingestion equal the ones a request would compute from its own placed cache, so a
warmed engine selects exactly what a cold one does."""

import pytest
import torch

from chunkcache.blend.anchor_memo import AnchorMemo
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.fusion import fused_contexts, precompute_fused
from chunkcache.blend.qcfuse import chunk_anchors
from chunkcache.blend.request import BlendRequest

PREFIX = (1, 2, 3, 4, 5, 6)  # longer than the 4 sinks: a request's sinks are the prefix's first tokens
CFG = BlendConfig(mode="fusionqc", recompute_ratio=0.2, critical_layers=(1, 2), anchor_ratio=0.3)


def _request(seed=0, lens=(20, 33, 17, 25)):
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(8, 256, (n,), generator=g).tolist()) for n in lens]
    vecs = torch.randn(len(chunks), 8, generator=g)
    suffix = torch.randint(8, 256, (6,), generator=g).tolist()
    return BlendRequest.of(PREFIX, chunks, suffix, fused=fused_contexts(PREFIX, chunks, vecs, 2))


def test_a_hit_serves_the_rows_and_deeper_layers_are_computed(tiny_runner, naive_cache):
    r, memo = tiny_runner, AnchorMemo()
    blender = Blender(r, ChunkSource(r, DictStore(), PREFIX))
    req = _request()
    cache, off, chunk = naive_cache(blender, req), req.chunk_offsets[1], req.chunks[1]
    want = chunk_anchors(r, cache, off, len(chunk), 4, 3, 0.3, 4)
    got = memo.get(r, cache, PREFIX[:4], PREFIX, chunk, off, 1, 0.3, 4)
    assert torch.equal(got, want[:2]) and len(memo) == 1
    blank = r.new_cache(cache.keys.shape[2])  # a hit reads no KV: anchors from a zero cache would differ
    assert torch.equal(memo.get(r, blank, PREFIX[:4], PREFIX, chunk, off, 1, 0.3, 4), want[:2])
    assert torch.equal(memo.get(r, cache, PREFIX[:4], PREFIX, chunk, off, 3, 0.3, 4), want)  # deeper: computed
    assert torch.equal(memo.get(r, blank, PREFIX[:4], PREFIX, chunk, off, 0, 0.3, 4), want[:1])
    assert not memo.holds(r, PREFIX[:4], (9,), chunk, 0, 0.3, 4)  # another entry is another key
    with pytest.raises(ValueError, match="capacity"):
        AnchorMemo(0)


def test_warmed_anchors_are_the_ones_a_request_computes(tiny_runner):
    r = tiny_runner
    source = ChunkSource(r, DictStore(), PREFIX)
    req = _request(1)
    precompute_fused(source, req.chunks, req.fused)
    memo = AnchorMemo()
    for chunk, ctx in zip(req.chunks, req.fused, strict=True):
        assert memo.warm(r, source, chunk, ctx, 2, 0.3, 4)
        assert not memo.warm(r, source, chunk, ctx, 2, 0.3, 4)  # held
    placed = Blender(r, source).prefill(req, BlendConfig(mode="fusion", recompute_ratio=0.0)).cache  # fused entries
    for i in range(1, len(req.chunks)):
        off, chunk = req.chunk_offsets[i], req.chunks[i]
        want = chunk_anchors(r, placed, off, len(chunk), 4, 2, 0.3, 4)
        warmed = memo.get(r, r.new_cache(1), PREFIX[:4], req.fused[i], chunk, off, 2, 0.3, 4)
        assert torch.equal(warmed, want), i
    with pytest.raises(ValueError, match="context_ids: must start with"):
        memo.warm(r, source, req.chunks[1], (7, 7, 7, 7, 7), 2, 0.3, 4)


def test_a_warmed_blender_selects_what_a_cold_one_does_without_computing_anchors(tiny_runner, monkeypatch):
    r = tiny_runner
    req = _request(2)
    cold_source = ChunkSource(r, DictStore(), PREFIX)
    precompute_fused(cold_source, req.chunks, req.fused)
    cold = Blender(r, cold_source).prefill(req, CFG)
    source = ChunkSource(r, DictStore(), PREFIX)
    precompute_fused(source, req.chunks, req.fused)
    memo = AnchorMemo()
    for chunk, ctx in zip(req.chunks[1:], req.fused[1:], strict=True):
        memo.warm(r, source, chunk, ctx, max(CFG.critical_layers), CFG.anchor_ratio, CFG.anchor_sinks)
    from chunkcache.blend import anchor_memo

    def no_compute(*a, **k):
        raise AssertionError("anchors computed on the request path")

    monkeypatch.setattr(anchor_memo, "chunk_anchors", no_compute)
    warm = Blender(r, source, anchor_memo=memo).prefill(req, CFG)
    assert warm.stats.recomputed_tokens == cold.stats.recomputed_tokens > 0
    torch.testing.assert_close(warm.cache.keys, cold.cache.keys, atol=1e-5, rtol=1e-5)
    assert (warm.logits - cold.logits).abs().max().item() < 1e-5


def _restarted_memos(runner, tmp_path):
    """A memo over a SQLite catalog that warmed req's fused entries, a second memo over the same catalog (a
    restart, or another replica), the request and its source."""
    from chunkcache.store.catalog import Catalog

    req, source = _request(3), ChunkSource(runner, DictStore(), PREFIX)
    precompute_fused(source, req.chunks, req.fused)
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    first = AnchorMemo(catalog=Catalog(url))
    for chunk, ctx in zip(req.chunks[1:], req.fused[1:], strict=True):
        assert first.warm(runner, source, chunk, ctx, max(CFG.critical_layers), CFG.anchor_ratio, CFG.anchor_sinks)
    return first, AnchorMemo(catalog=Catalog(url)), req, source


def test_anchors_persist_in_the_catalog_across_a_restart(tiny_runner, tmp_path, monkeypatch):
    r = tiny_runner
    first, memo, req, source = _restarted_memos(r, tmp_path)
    assert first.computed == len(req.chunks) - 1 and first.loaded == 0
    cold = Blender(r, source, anchor_memo=AnchorMemo()).prefill(req, CFG)  # no catalog: computes its own
    from chunkcache.blend import anchor_memo

    def no_compute(*a, **k):
        raise AssertionError("anchors computed after the restart")

    monkeypatch.setattr(anchor_memo, "chunk_anchors", no_compute)
    assert not memo.warm(r, source, req.chunks[1], req.fused[1], max(CFG.critical_layers), CFG.anchor_ratio,
                         CFG.anchor_sinks)  # held by the catalog: nothing to compute, the entry not read
    warm = Blender(r, source, anchor_memo=memo).prefill(req, CFG)
    assert memo.computed == 0 and memo.loaded == len(req.chunks) - 1
    assert warm.stats.recomputed_tokens == cold.stats.recomputed_tokens > 0
    torch.testing.assert_close(warm.cache.keys, cold.cache.keys, atol=1e-5, rtol=1e-5)
    assert (warm.logits - cold.logits).abs().max().item() < 1e-5


def test_a_malformed_or_unreadable_catalog_row_is_computed_again(tiny_runner, tmp_path, caplog):
    from chunkcache.store.keys import anchor_key, chunk_key

    r = tiny_runner
    _, memo, req, source = _restarted_memos(r, tmp_path)
    cache = Blender(r, source).prefill(req, BlendConfig(mode="fusion", recompute_ratio=0.0)).cache  # fused entries
    chunk, ctx, off = req.chunks[1], req.fused[1], req.chunk_offsets[1]
    key = anchor_key(chunk_key(r.fingerprint, ctx, chunk), PREFIX[:4], CFG.anchor_ratio, CFG.anchor_sinks)
    layers, count, data = memo.catalog.get_anchors(key)
    want = memo.get(r, cache, PREFIX[:4], ctx, chunk, off, 2, CFG.anchor_ratio, CFG.anchor_sinks)
    assert memo.loaded == 1 and memo.computed == 0
    bad = bytearray(data)
    bad[4:8] = (len(chunk) + 5).to_bytes(4, "little")  # an index past the chunk
    for stored in ((layers, count, bytes(bad)), (layers, count + 1, data + bytes(4 * layers))):
        memo.catalog.put_anchors(key, None, *stored)
        fresh = AnchorMemo(catalog=memo.catalog)
        with caplog.at_level("WARNING"):
            got = fresh.get(r, cache, PREFIX[:4], ctx, chunk, off, 2, CFG.anchor_ratio, CFG.anchor_sinks)
        assert torch.equal(got, want) and fresh.computed == 1 and fresh.loaded == 0
        assert "malformed" in caplog.text
        assert memo.catalog.get_anchors(key) == (layers, count, data)  # the computed set written back

    class Down:
        def get_anchors(self, key):  # a database that does not answer: cannot be produced on SQLite at will
            raise OSError("connection refused")

        put_anchors = get_anchors

    down = AnchorMemo(catalog=Down())
    with caplog.at_level("WARNING"):
        got = down.get(r, cache, PREFIX[:4], ctx, chunk, off, 2, CFG.anchor_ratio, CFG.anchor_sinks)
    assert torch.equal(got, want) and down.computed == 1 and "connection refused" in caplog.text
