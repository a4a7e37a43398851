"""The scheduler on the tiny random llama in float64: batched output equals each request run alone, admission
under the KV budget, cancellation, seeds, chunked prefill between decode steps."""

import threading

import pytest
import torch

from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.decode import SamplingConfig, decode
from chunkcache.runner.detokenize import complete_text
from chunkcache.runner.runner import ModelRunner
from chunkcache.serving import QueueFull, Scheduler, SchedulerConfig, SequenceRequest, one_shot
from tiny_models import tiny_llama

PREFIX = (1, 2, 3)


@pytest.fixture(scope="module")
def blender() -> Blender:
    runner = ModelRunner(tiny_llama(seed=5).to(torch.float64), kernels="torch")
    return Blender(runner, ChunkSource(runner, DictStore(), context_ids=PREFIX))


def _request(seed: int, n_chunks: int, suffix_len: int = 5) -> BlendRequest:
    g = torch.Generator().manual_seed(seed)
    chunks = [tuple(torch.randint(4, 256, (int(torch.randint(8, 40, (1,), generator=g)),), generator=g).tolist())
              for _ in range(n_chunks)]
    return BlendRequest.of(PREFIX, chunks, torch.randint(4, 256, (suffix_len,), generator=g).tolist())


def _alone(blender, req, mode, sampling, eos=frozenset()) -> list[int]:
    res = blender.prefill(req, BlendConfig(mode=mode), reserve=sampling.max_new_tokens)
    return list(decode(blender.runner, res.cache, res.logits, sampling, set(eos)))


def _seq(blender, req, mode, sampling, eos=frozenset(), **kw) -> SequenceRequest:
    cfg = BlendConfig(mode=mode)
    return SequenceRequest(lambda reserve, slice_tokens: blender.prefill_steps(req, cfg, reserve, slice_tokens),
                           sampling, set(eos), req.num_tokens + sampling.max_new_tokens, **kw)


CASES = [(0, 1, "full", 9), (1, 3, "blend", 14), (2, 2, "cacheblend", 5), (3, 4, "naive", 12), (4, 3, "prefix", 16),
         (5, 5, "full", 11), (6, 2, "blend", 1), (7, 4, "prefix", 7)]


def test_batched_greedy_equals_alone_with_mixed_modes_lengths_and_arrivals(blender):
    reqs = [(_request(seed, n), mode, SamplingConfig(max_new_tokens=m)) for seed, n, mode, m in CASES]
    expected = [_alone(blender, r, mode, s) for r, mode, s in reqs]
    eos = {expected[1][3]}  # request 1 stops at EOS (not yielded), others may too where they produce it
    expected = [_alone(blender, r, mode, s, eos) for r, mode, s in reqs]
    finished = []
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=5, max_batch_tokens=16))
    try:
        keep = lambda seq: finished.append((seq.finish_reason, seq.result is not None))  # noqa: E731
        first = [sched.submit(_seq(blender, r, mode, s, eos, on_finish=keep)) for r, mode, s in reqs[:4]]
        events = [[next(iter(h))] for h in first[:2]]  # the first two decode before the others arrive
        later = [sched.submit(_seq(blender, r, mode, s, eos)) for r, mode, s in reqs[4:]]
        results = [list(h) for h in first + later]
    finally:
        sched.close()
    results[0], results[1] = events[0] + results[0], events[1] + results[1]
    for i, (evs, want) in enumerate(zip(results, expected, strict=True)):
        done = evs[-1]
        assert [e["token"] for e in evs[:-1]] == [t for t in want if t not in eos], i
        assert done["token_ids"] == [t for t in want if t not in eos], i
        assert done["finish_reason"] == ("stop" if want[-1] in eos else "length"), i
        assert done["done"]["mode"] == reqs[i][1] and done["usage"]["completion_tokens"] == len(done["token_ids"])
    assert results[1][-1]["finish_reason"] == "stop" and len(results[1][-1]["token_ids"]) == 3
    assert sorted(finished) == sorted((r[-1]["finish_reason"], True) for r in results[:4])
    assert sched.kv_in_flight == 0 and sched.active == 0


def test_long_full_prefill_is_sliced_between_decode_steps(blender):
    short = _request(10, 1)
    long = _request(11, 6)  # about 150 tokens: 10 slices of 16
    cfg = BlendConfig(mode="full")
    seen = []
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=2, max_batch_tokens=16))

    def sliced(reserve, slice_tokens):
        steps = blender.prefill_steps(long, cfg, reserve, slice_tokens)
        while True:
            seen.append(a._events.qsize())  # tokens the short request has received so far
            try:
                n = next(steps)
            except StopIteration as done:
                return done.value
            assert n <= 16
            yield n

    try:
        a = sched.submit(_seq(blender, short, "full", SamplingConfig(max_new_tokens=40)))
        while a._events.qsize() < 1:
            threading.Event().wait(0.01)
        b = sched.submit(SequenceRequest(sliced, SamplingConfig(max_new_tokens=3), set(), long.num_tokens + 3))
        done_b = b.result()
        a.result()
    finally:
        sched.close()
    assert len(seen) >= long.num_tokens // 16
    # one decode step of `a` between slices; the last slice is a remainder, so the result follows in its step
    assert all(y == x + 1 for x, y in zip(seen[:-2], seen[1:-1], strict=True))
    assert done_b["token_ids"] == _alone(blender, long, "full", SamplingConfig(max_new_tokens=3))


def test_admission_waits_for_the_kv_budget_then_refuses(blender):
    req = _request(20, 2)
    s = SamplingConfig(max_new_tokens=4)
    need = (req.num_tokens + 4) * 2 * 4 * 2 * 16 * 8  # layers, kv heads, head_dim, float64
    gate, entered, log = threading.Event(), threading.Event(), []
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=4, kv_budget_bytes=2 * need, max_waiting=2))
    assert sched.kv_bytes_per_token * (req.num_tokens + 4) == need

    def gated(name):
        def prefill(reserve):
            log.append(("start", name, sched.kv_in_flight, sched.active))
            entered.set()
            gate.wait(10)
            return blender.prefill(req, BlendConfig(mode="full"), reserve)
        return SequenceRequest(one_shot(prefill), s, set(), req.num_tokens + 4,
                               on_finish=lambda seq: log.append(("finish", name)))

    try:
        with pytest.raises(ValueError, match="kv_tokens"):
            sched.submit(SequenceRequest(one_shot(None), s, set(), 3 * (req.num_tokens + 4)))
        h1 = sched.submit(gated(1))
        assert entered.wait(10)  # the scheduler thread is inside request 1's prefill
        h2, h3 = sched.submit(gated(2)), sched.submit(gated(3))
        assert sched.depth == 2 and sched.active == 1
        with pytest.raises(QueueFull):
            sched.submit(gated(4))
        gate.set()
        dones = [h.result() for h in (h1, h2, h3)]
    finally:
        sched.close()
    assert all(d["token_ids"] == _alone(blender, req, "full", s) for d in dones)
    starts = [e for e in log if e[0] == "start"]
    assert all(kv <= 2 * need and active <= 2 for _, _, kv, active in starts)
    start3 = next(i for i, e in enumerate(log) if e[:2] == ("start", 3))
    assert start3 > min(log.index(("finish", 1)), log.index(("finish", 2)))  # it waited for KV to be freed
    assert sched.kv_in_flight == 0


def test_cancel_frees_the_slot(blender):
    req = _request(30, 2)
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=1))
    finished = []
    try:
        a = sched.submit(_seq(blender, req, "blend", SamplingConfig(max_new_tokens=200), on_finish=finished.append))
        it = iter(a)
        next(it)
        a.cancel()
        b = sched.submit(_seq(blender, req, "naive", SamplingConfig(max_new_tokens=3)))
        done_b = b.result()
        done_a = list(it)[-1]
    finally:
        sched.close()
    assert done_a["finish_reason"] == "cancelled" and len(done_a["token_ids"]) < 200
    assert finished == []  # on_finish is not run for a cancelled sequence
    assert done_b["token_ids"] == _alone(blender, req, "naive", SamplingConfig(max_new_tokens=3))
    assert sched.kv_in_flight == 0 and sched.active == 0


def test_seeded_sampling_is_per_request(blender):
    reqs = [_request(40 + i, 2) for i in range(3)]
    sampled = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=7)
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=3))
    try:
        alone = sched.submit(_seq(blender, reqs[0], "full", sampled)).result()["token_ids"]
        handles = [sched.submit(_seq(blender, r, "full", s)) for r, s in
                   [(reqs[1], SamplingConfig(max_new_tokens=12, temperature=1.0, seed=1)), (reqs[0], sampled),
                    (reqs[2], SamplingConfig(max_new_tokens=12, temperature=0.7))]]
        batched = [h.result()["token_ids"] for h in handles]
        other_seed = sched.submit(_seq(blender, reqs[0], "full", SamplingConfig(max_new_tokens=12, temperature=1.0,
                                                                               seed=8))).result()["token_ids"]
    finally:
        sched.close()
    assert batched[1] == alone
    assert other_seed != alone
    assert alone != _alone(blender, reqs[0], "full", SamplingConfig(max_new_tokens=12))  # it did sample


def test_stop_string_ends_the_text_before_it(blender, smollm_tokenizer):
    req = _request(50, 2)
    s = SamplingConfig(max_new_tokens=24)
    want = _alone(blender, req, "full", s)
    text = complete_text(smollm_tokenizer.decode(want, skip_special_tokens=True))
    stop = text[len(text) // 2:len(text) // 2 + 3]
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=2))
    try:
        plain = sched.submit(_seq(blender, req, "full", s, tokenizer=smollm_tokenizer))
        stopped = sched.submit(_seq(blender, req, "full", s, tokenizer=smollm_tokenizer, stop=[stop]))
        plain_events, stop_events = list(plain), list(stopped)
    finally:
        sched.close()
    assert plain_events[-1]["text"] == "".join(e["text"] for e in plain_events[:-1]) == text
    done = stop_events[-1]
    assert done["finish_reason"] == "stop" and done["text"] == text[:text.find(stop)]
    assert "".join(e["text"] for e in stop_events[:-1]) == done["text"]
    assert done["token_ids"] == want[:len(done["token_ids"])] and len(done["token_ids"]) < len(want)


def test_a_sequence_correcting_its_context_during_decode_equals_it_alone(blender):
    """A request with decode_correction decodes alone (its token with its context batch) beside batched ones."""
    sampling = SamplingConfig(max_new_tokens=8)
    fixing = BlendConfig(mode="query", recompute_ratio=0.1, decode_correction=6)
    reqs = [(_request(22, 4), fixing), (_request(21, 3), BlendConfig(mode="blend")),
            (_request(22, 2), BlendConfig(mode="full"))]
    expected, plain = [], []
    for req, cfg in reqs:
        res = blender.prefill(req, cfg, reserve=8)
        expected.append(list(decode(blender.runner, res.cache, res.logits, sampling, set(), res.correction)))
        res = blender.prefill(req, BlendConfig(mode=cfg.mode, recompute_ratio=cfg.recompute_ratio), reserve=8)
        plain.append(list(decode(blender.runner, res.cache, res.logits, sampling, set())))
    assert expected[0] != plain[0]  # the correction changes this answer, so the check below can fail
    sched = Scheduler(blender.runner, SchedulerConfig(max_batch=3))
    try:
        handles = [sched.submit(SequenceRequest(
            lambda reserve, slice_tokens, req=req, cfg=cfg: blender.prefill_steps(req, cfg, reserve, slice_tokens),
            sampling, set(), req.num_tokens + 8)) for req, cfg in reqs]
        results = [list(h)[-1]["token_ids"] for h in handles]
    finally:
        sched.close()
    assert results == expected
