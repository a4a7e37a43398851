"""BlendConfig.decode_correction on the tiny random llama: the prefill is unchanged, its queue holds exactly the
context tokens left from cache (best first by the mode's score), and replaying it brings teacher-forced decoding
closer to full prefill."""

import pytest
import torch

from chunkcache.bench.metrics import teacher_forced
from chunkcache.bench.teacher_forcing import greedy, tf_logits
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.modes import Candidates, keep_top
from chunkcache.blend.probe import suffix_attention_by_layer
from chunkcache.blend.request import BlendRequest

PREFIX = (1, 2, 3)


def _request(seed=0, lens=(20, 33, 17, 25), suffix_len=6):
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (n,), generator=g).tolist()) for n in lens]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (suffix_len,), generator=g).tolist())


def _lo(req):
    return len(PREFIX) + len(req.chunks[0])  # chunk 0 sits behind the exact prefix: never a candidate


@pytest.mark.parametrize("mode", ["query", "blend", "cacheblend", "naive", "prophet2"])
def test_the_prefill_is_unchanged_and_the_queue_is_what_was_left_from_cache(tiny_blender, mode):
    req = _request()
    plain = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.2))
    res = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=0.2, decode_correction=8))
    assert plain.correction is None
    assert torch.equal(plain.logits, res.logits)
    assert torch.equal(plain.cache.keys[:, :, :req.num_tokens], res.cache.keys[:, :, :req.num_tokens])
    naive = tiny_blender.prefill(req, BlendConfig(mode="naive"))
    last, lo = tiny_blender.runner.n_layers - 1, _lo(req)
    diff = (res.cache.keys[last, :, lo:req.suffix_start] - naive.cache.keys[last, :, lo:req.suffix_start]).abs()
    left = ((diff.amax(dim=(0, 2)) <= 1e-6).nonzero().flatten() + lo).tolist()  # candidates still as placed
    pending = res.correction.pending.tolist()
    assert sorted(pending) == left and len(set(pending)) == len(pending)
    assert res.stats.decode_pending == len(left) == req.suffix_start - lo - res.stats.recomputed_tokens
    assert res.correction.per_step == 8 and res.correction.ids.tolist() == list(req.token_ids())
    if mode in ("naive", "cacheblend"):  # no ranking of the rest: position order
        assert pending == left


def test_a_question_scored_queue_is_ordered_by_the_score(tiny_blender):
    req = _request(seed=1)
    res = tiny_blender.prefill(req, BlendConfig(mode="query", recompute_ratio=0.2, decode_correction=4))
    naive = tiny_blender.prefill(req, BlendConfig(mode="naive"))
    naive.cache.truncate(req.suffix_start)
    ids = torch.tensor(req.token_ids())
    score = suffix_attention_by_layer(tiny_blender.runner, naive.cache, ids[req.suffix_start:]).sum(0)  # [n]
    ranked = score[res.correction.pending]
    assert bool((ranked[:-1] >= ranked[1:] - 1e-6).all())
    assert ranked[0] > ranked[-1]


def test_keep_top_ranks_every_other_candidate_once(tiny_blender):
    score = torch.tensor([0.5, 3.0, -1.0, float("-inf"), 2.0, 0.0, float("-inf")])
    c = Candidates(tiny_blender.runner, None, None, None, BlendConfig(decode_correction=1), 0, 7, 2, lambda: None)
    sel = keep_top(c, score, 2)
    assert sel.keep.tolist() == [1, 4]
    assert sel.rest[:3].tolist() == [0, 5, 2] and sorted(sel.rest[3:].tolist()) == [3, 6]
    off = Candidates(tiny_blender.runner, None, None, None, BlendConfig(), 0, 7, 2, lambda: None)
    assert keep_top(off, score, 2).rest is None


def test_the_replayed_correction_brings_decoding_closer_to_full_prefill(tiny_blender):
    r = tiny_blender.runner
    kls = {True: [], False: []}
    for seed in range(4):
        req = _request(seed=seed)
        full = tiny_blender.prefill(req, BlendConfig(mode="full"), reserve=12)
        answer = greedy(r, full.cache, full.logits, 10, set())
        full.cache.truncate(req.num_tokens)
        ref = tf_logits(r, full.cache, full.logits, answer)
        for on in (True, False):
            res = tiny_blender.prefill(req, BlendConfig(mode="query", recompute_ratio=0.1,
                                                        decode_correction=200 if on else 0), reserve=12)
            before = res.cache.keys[:, :, :req.num_tokens].clone()
            got = tf_logits(r, res.cache, res.logits, answer, correction=res.correction)
            assert torch.equal(res.cache.keys[:, :, :req.num_tokens], before)  # replayed on a copy
            assert res.cache.length == req.num_tokens
            torch.testing.assert_close(got[0], res.logits)  # the first token is the prefill's
            kls[on].append(teacher_forced(ref[1:], got[1:])[1])
    assert sum(kls[True]) < 0.5 * sum(kls[False])


def test_negative_decode_correction_is_refused():
    with pytest.raises(ValueError, match="decode_correction"):
        BlendConfig(decode_correction=-1)
