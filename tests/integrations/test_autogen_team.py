"""AutoGen in-process on the real model: a two-round, three-agent RoundRobinGroupChat on
ChunkCacheChatCompletionClient."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
import torch
from autogen_agentchat.messages import ModelClientStreamingChunkEvent, TextMessage
from autogen_core.models import SystemMessage, UserMessage

from chunkcache.agents.chat_layout import chat_template
from chunkcache.agents.config import AnchorConfig
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.bench.metrics import teacher_forced
from chunkcache.bench.teacher_forcing import tf_logits
from chunkcache.blend.config import BlendConfig
from chunkcache.integrations.autogen import ChunkCacheChatCompletionClient, to_chat
from chunkcache.runner.runner import ModelRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agents_autogen.py"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("agents_autogen_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runner(smollm):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return ModelRunner(smollm.model, smollm.tokenizer)


def test_team_reuses_kv_and_first_turn_follows_dense(example, runner) -> None:  # type: ignore[no-untyped-def]
    # entropy_threshold=1: reuse whenever two anchors match, so the test does not hinge on the admission policy
    rt = AgentRuntime(runner, anchor_config=AnchorConfig(entropy_threshold=1.0))
    client = ChunkCacheChatCompletionClient(rt, mode="kvcomm+epic", max_tokens=MAX_TOKENS)
    turns = asyncio.run(example.debate(client, rounds=2))
    assert [a for a, _, _ in turns] == ["pro", "con", "judge"] * 2 and all(t.strip() for _, t, _ in turns)
    for i, (_, _, s) in enumerate(turns):  # the task is a chunk; every earlier reply is read as its author's KV
        assert [x["base"] for x in s["slots"]][1:] == ["response"] * i, (i, s["slots"])
        assert s["reused_tokens"] >= 0.45 * s["prompt_tokens"], (i, s["reused_tokens"], s["prompt_tokens"])
    assert turns[-1][2]["anchors_hit"] >= 1  # round 2: a reply placed from the anchor pool's estimate
    usage = client.total_usage()
    assert usage.prompt_tokens == sum(s["prompt_tokens"] for _, _, s in turns)
    assert 6 <= usage.completion_tokens <= 6 * MAX_TOKENS

    dense = ChunkCacheChatCompletionClient(AgentRuntime(runner), mode="full", max_tokens=MAX_TOKENS)
    first = asyncio.run(example.debate(dense, rounds=1))[0]
    assert first[0] == "pro" and first[2]["reused_tokens"] == 0
    ids = runner.tokenizer.encode(first[1], add_special_tokens=False)
    assert runner.tokenizer.encode(turns[0][1], add_special_tokens=False)[:4] == ids[:4]  # greedy texts agree early
    # teacher-forced on dense's first reply, the blended prompt picks dense's next token nearly everywhere
    template, values = chat_template(runner.tokenizer, to_chat([SystemMessage(content=example.ROLES["pro"]),
                                                               UserMessage(content=example.TASK, source="user")]))
    logits = {}
    for mode in ("full", "kvcomm+epic"):
        pre, _ = AgentRuntime(runner).prefill(template, values, BlendConfig.named(mode), reserve=len(ids) + 1)
        logits[mode] = tf_logits(runner, pre.cache, pre.logits, ids)
    top1, kl = teacher_forced(logits["full"], logits["kvcomm+epic"])
    assert top1 >= 0.75 and kl <= 0.1, (top1, kl)


def test_team_streams_through_the_detokenizer(example, runner) -> None:  # type: ignore[no-untyped-def]
    client = ChunkCacheChatCompletionClient(AgentRuntime(runner), mode="kvcomm+epic", max_tokens=MAX_TOKENS)
    team = example.build_team(client, rounds=1, stream=True)

    async def run() -> list:
        return [e async for e in team.run_stream(task=example.TASK)]

    events = asyncio.run(run())
    replies = [e for e in events if isinstance(e, TextMessage) and e.source != "user"]
    assert [r.source for r in replies] == ["pro", "con", "judge"]
    for r in replies:
        pieces = [e.content for e in events if isinstance(e, ModelClientStreamingChunkEvent) and e.source == r.source]
        assert len(pieces) >= 3 and "".join(pieces) == r.content


def test_client_options_usage_and_refusals(runner) -> None:  # type: ignore[no-untyped-def]
    client = ChunkCacheChatCompletionClient(AgentRuntime(runner), mode="blend", max_tokens=MAX_TOKENS)
    msgs = [SystemMessage(content="Be brief."), UserMessage(content="Write a paragraph about Paris.", source="ana")]
    out = asyncio.run(client.create(msgs, extra_create_args={"max_tokens": 3}))
    assert out.usage.completion_tokens == 3 and out.finish_reason == "length"
    assert out.usage.prompt_tokens == client.count_tokens(msgs) == client.last_stats["prompt_tokens"]
    assert client.remaining_tokens(msgs) == runner.max_positions - out.usage.prompt_tokens
    free = asyncio.run(client.create(msgs))
    stop = " " + free.content.split()[2]
    cut = asyncio.run(client.create(msgs, extra_create_args={"stop": [stop]}))
    assert cut.content == free.content[:free.content.index(stop)] and cut.finish_reason == "stop"
    assert client.model_info["function_calling"] is False and client.model_info["vision"] is False
    with pytest.raises(ValueError, match="function calling"):
        asyncio.run(client.create(msgs, tools=[{"name": "add", "parameters": {}}]))
    with pytest.raises(ValueError, match="JSON"):
        asyncio.run(client.create(msgs, json_output=True))
    with pytest.raises(ValueError, match="unknown"):
        asyncio.run(client.create(msgs, extra_create_args={"frequency_penalty": 1}))
    fixed = ChunkCacheChatCompletionClient(AgentRuntime(runner), mode="blend", max_tokens=3, decode_correction=4)
    asyncio.run(fixed.create(msgs))
    asyncio.run(fixed.create(msgs))  # the messages are cached now: placed, then recomputed during decode
    assert fixed.last_stats["decode_pending"] > 0 and client.last_stats["decode_pending"] == 0
    with pytest.raises(ValueError, match="one, not both"):
        ChunkCacheChatCompletionClient(AgentRuntime(runner), decode_correction=4, decode_correction_steps=2)
