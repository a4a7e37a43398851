"""The runtime on SmolLM2: discussion rounds and a pipeline in every mode, response KV reuse, bad input."""

import pytest
import torch

from chunkcache.agents.config import AnchorConfig
from chunkcache.blend.config import BlendConfig
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.template import Message
from chunkcache.agents.workflows import Agent, pipeline_template
from chunkcache.bench.metrics import teacher_forced
from chunkcache.runner.decode import SamplingConfig
from chunkcache.runner.runner import ModelRunner

AGENTS = [Agent("alice", "You are a historian."), Agent("bob", "You are a geographer."),
          Agent("carol", "You are a fact checker.")]
CONTEXT = ("The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was designed by the company of "
           "Gustave Eiffel and completed in 1889 for the World's Fair.")
QUESTIONS = ["Who designed the Eiffel Tower?", "When was the Eiffel Tower completed?", "In which city is the tower?"]
SAMPLING = SamplingConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def runner(smollm):
    torch.set_num_threads(2)
    return ModelRunner(smollm.model, smollm.tokenizer)


def test_discussion_dense_and_kvcomm(runner):
    dense_rt = AgentRuntime(runner)
    rounds = dense_rt.discussion(AGENTS, QUESTIONS[0], CONTEXT, rounds=2, cfg=BlendConfig(mode="full"),
                                 sampling=SAMPLING)
    assert [len(r) for r in rounds] == [3, 3]
    assert all(t.text.strip() and t.stats.ttft_s > 0 for r in rounds for t in r)
    assert [t.round for t in rounds[1]] == [2, 2, 2]
    assert all(t.stats.reused_tokens == 0 for r in rounds for t in r)

    # entropy_threshold=1: reuse whenever two anchors match (the admission policy is tested on the tiny model)
    rt = AgentRuntime(runner, anchor_config=AnchorConfig(entropy_threshold=1.0))
    kv = BlendConfig.named("kvcomm")
    first = rt.discussion(AGENTS, QUESTIONS[0], CONTEXT, rounds=2, cfg=kv, sampling=SAMPLING)
    assert all(t.stats.dense_fallback and t.stats.anchors_added > 0 for r in first for t in r)
    assert [t.text for t in first[0]] == [t.text for t in rounds[0]]  # dense from the first placeholder: exact
    assert all(t.stats.anchors_hit == 0 for t in first[0])
    for t in first[1]:  # round 2: the context is served exactly by this agent's round-1 anchor; the question
        # is followed by other text than in round 1 (another reader), so it has no anchor yet
        assert t.stats.slots[0]["reason"] == "exact anchor" and t.stats.anchors_hit == 1
        assert t.stats.slots[1]["reason"] == "0 matching anchors < 2"
    msg_slots = [s for t in first[1] for s in t.stats.slots if s["placeholder"].startswith("msg_")]
    assert len(msg_slots) == 6 and all(s["base"] == "response" for s in msg_slots)  # generated KV reused as base
    for q in QUESTIONS[1:]:
        last = rt.discussion(AGENTS, q, CONTEXT, rounds=1, cfg=kv, sampling=SAMPLING)
    hits = [t for t in last[0] if t.stats.anchors_hit]
    assert hits, [t.stats.slots for t in last[0]]
    t = hits[0]
    assert t.stats.reused_tokens > 0.8 * t.stats.prompt_tokens and t.stats.anchors_added == 0


def test_anchor_estimate_tracks_dense(runner):
    """Teacher-forced on the dense answer, an anchored turn agrees with dense on most tokens."""
    rt = AgentRuntime(runner)
    from chunkcache.agents.workflows import round_template

    tpl = round_template(AGENTS[0], AGENTS[1:], True, True)
    kv, dense_cfg = BlendConfig.named("kvcomm"), BlendConfig(mode="full")
    for q in QUESTIONS[:2]:
        rt.prefill(tpl, {"context": CONTEXT, "question": q}, kv)
    values = {"context": CONTEXT, "question": QUESTIONS[2]}
    ref, n = rt.prefill(tpl, values, dense_cfg, reserve=16)
    answer = rt.turn(tpl, values, dense_cfg, SamplingConfig(max_new_tokens=10)).message.token_ids
    est, _ = rt.prefill(tpl, values, kv, reserve=16)
    assert est.stats.anchors_hit == 2 and not est.stats.dense_fallback

    def tf(pre):
        with torch.inference_mode():
            h = runner.extend(torch.tensor(answer[:-1], device=runner.device), pre.cache)
            return torch.cat((pre.logits[None], runner.logits(h)))

    top1, kl = teacher_forced(tf(ref), tf(est))
    assert top1 >= 0.7 and kl < 1.0, (top1, kl)


def test_pipeline_blend_reads_earlier_stages(runner):
    rt = AgentRuntime(runner)
    turns = rt.pipeline(AGENTS, QUESTIONS[0], CONTEXT, cfg=BlendConfig(mode="cacheblend", recompute_ratio=0.2),
                        sampling=SAMPLING)
    assert [t.round for t in turns] == [1, 2, 3]
    assert [len(t.stats.slots) for t in turns] == [2, 3, 4]
    assert [s["base"] for s in turns[2].stats.slots if s["placeholder"].startswith("msg_")] == ["response"] * 2
    for t in turns:
        assert 0 < t.stats.recomputed_tokens < t.stats.reused_tokens
    pre = BlendConfig(mode="prefix")
    once = rt.pipeline(AGENTS, QUESTIONS[0], CONTEXT, cfg=pre, sampling=SAMPLING)
    twice = rt.pipeline(AGENTS, QUESTIONS[0], CONTEXT, cfg=pre, sampling=SAMPLING)
    first_prefix = rt.compile(pipeline_template(AGENTS[0], [], True)).prefix_ids
    assert once[0].stats.reused_tokens == len(first_prefix)  # prefix mode: the exact agent prefix only
    assert [t.text for t in twice] == [t.text for t in once]
    assert all(t.stats.reused_tokens == t.stats.prompt_tokens - 1 for t in twice)  # identical prompts


def test_bad_runtime_input(runner):
    rt = AgentRuntime(runner)
    with pytest.raises(ValueError, match="identifier"):
        Agent("bad name", "role")
    with pytest.raises(ValueError, match="duplicate"):
        rt.round([AGENTS[0], AGENTS[0]], "q?")
    with pytest.raises(ValueError, match="previous messages"):
        rt.round(AGENTS, "q?", previous={"alice": Message("hi")})
    with pytest.raises(ValueError, match="exceeds the model context"):
        rt.round(AGENTS[:1], "q?", context="word " * (runner.max_positions + 10))


def test_each_turn_returns_freed_heap_to_the_os(runner):
    """AgentRuntime.turn trims the heap once per turn, after the turn's KV is freed (bounded RSS in long runs)."""
    rt = AgentRuntime(runner)
    calls, trim = [], rt._trim
    rt._trim = lambda: calls.append(trim())
    rounds = rt.discussion(AGENTS[:2], QUESTIONS[1], CONTEXT, rounds=2, sampling=SamplingConfig(max_new_tokens=2))
    assert len(calls) == sum(len(r) for r in rounds) == 4
