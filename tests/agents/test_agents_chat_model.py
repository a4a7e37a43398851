"""ChunkCacheChatModel on the real model: chat-template prompt, streaming, usage, stop, sampling parameters."""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from chunkcache.agents.langchain_chat import ChunkCacheChatModel
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.runner.runner import ModelRunner

CONVERSATION = [SystemMessage("You are a {curly} geographer."), HumanMessage("Name a river in Brazil.", name="ana"),
                AIMessage("The Amazon.", name="bot"), HumanMessage("Write a paragraph about the history of Egypt.")]


@pytest.fixture(scope="module")
def runtime(smollm):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    rt = AgentRuntime(ModelRunner(smollm.model, smollm.tokenizer))
    yield rt
    rt.close()


def test_prompt_is_the_chat_template_rendering(runtime) -> None:  # type: ignore[no-untyped-def]
    """Token for token the model's chat template, names inside user turns; each message is one chunk."""
    llm = ChunkCacheChatModel(runtime=runtime)
    tpl, values = llm.to_template(CONVERSATION)
    req = runtime.compile(tpl).bind(values, runtime.tokenizer, runtime.runner.max_positions)
    ids = list(req.prefix_ids) + [t for c in req.chunks for t in c] + list(req.suffix_ids)
    turns = [{"role": "system", "content": "You are a {curly} geographer."},
             {"role": "user", "content": "ana:\nName a river in Brazil."},
             {"role": "assistant", "content": "The Amazon."},
             {"role": "user", "content": "Write a paragraph about the history of Egypt."}]
    text = runtime.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert ids == runtime.tokenizer.encode(text, add_special_tokens=False)
    chunk_texts = [runtime.tokenizer.decode(req.chunks[p.chunk]) for p in req.placeholders]
    assert chunk_texts == ["Name a river in Brazil.", "The Amazon.", "Write a paragraph about the history of Egypt."]


def test_stream_matches_invoke_and_reports_usage(runtime) -> None:  # type: ignore[no-untyped-def]
    llm = ChunkCacheChatModel(runtime=runtime, mode="kvcomm+epic", max_tokens=10)
    reply = llm.invoke(CONVERSATION)
    chunks = list(llm.stream(CONVERSATION))
    assert "".join(c.content for c in chunks) == reply.content and len(chunks) >= 3
    assert all(c.usage_metadata is None for c in chunks[:-1]) and chunks[-1].chunk_position == "last"
    usage, stats = chunks[-1].usage_metadata, chunks[-1].response_metadata["chunkcache"]
    assert usage["input_tokens"] == stats["prompt_tokens"] and usage["output_tokens"] == 10  # no EOS within 10
    assert usage["total_tokens"] == usage["input_tokens"] + 10
    assert usage["input_token_details"]["cache_read"] == stats["reused_tokens"] > 0  # the second read reuses
    assert reply.usage_metadata["input_tokens"] == usage["input_tokens"]
    assert chunks[-1].response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    dense = ChunkCacheChatModel(runtime=runtime, mode="full", max_tokens=10).invoke(CONVERSATION)
    assert dense.usage_metadata["input_token_details"]["cache_read"] == 0


def test_stop_ends_decoding(runtime) -> None:  # type: ignore[no-untyped-def]
    llm = ChunkCacheChatModel(runtime=runtime, mode="full", max_tokens=16)
    free = llm.invoke(CONVERSATION)
    assert free.usage_metadata["output_tokens"] == 16, free.content
    words = free.content.split()
    stop = " " + words[len(words) // 2]  # a word in the middle of the free answer
    cut = llm.invoke(CONVERSATION, stop=[stop, "never appears"])
    assert cut.content == free.content[:free.content.index(stop)]
    assert cut.usage_metadata["output_tokens"] < 16 and cut.response_metadata["finish_reason"] == "stop"
    pieces = [c.content for c in ChunkCacheChatModel(runtime=runtime, mode="full", max_tokens=16,
                                                     stop=[stop]).stream(CONVERSATION)]
    assert "".join(pieces) == cut.content and not any(stop.strip() in p for p in pieces)


def test_sampling_parameters_reach_decoding(runtime) -> None:  # type: ignore[no-untyped-def]
    greedy = ChunkCacheChatModel(runtime=runtime, mode="full", max_tokens=8)
    hot = ChunkCacheChatModel(runtime=runtime, mode="full", max_tokens=8, temperature=1.5, seed=7)
    first, again = hot.invoke(CONVERSATION), hot.invoke(CONVERSATION)
    assert first.content == again.content  # the seed fixes the sample
    seeds = {hot.invoke(CONVERSATION, seed=s).content for s in range(4)}
    assert len(seeds) > 1  # temperature 1.5 samples: different seeds, different answers
    nucleus = hot.invoke(CONVERSATION, top_p=1e-6, seed=3)  # only the top token survives: greedy
    assert nucleus.content == greedy.invoke(CONVERSATION).content
    assert greedy.invoke(CONVERSATION, max_tokens=3).usage_metadata["output_tokens"] == 3


def test_names_params_and_deprecated_alias(runtime) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(DeprecationWarning, match="max_tokens"):
        old = ChunkCacheChatModel(runtime=runtime, max_new_tokens=5)
    assert old.max_tokens == 5
    llm = ChunkCacheChatModel(runtime=runtime, max_tokens=7, temperature=0.5, stop=["\n"])
    assert llm._get_ls_params() == {"ls_provider": "chunkcache", "ls_model_name": "SmolLM2-135M-Instruct",
                                    "ls_model_type": "chat", "ls_temperature": 0.5, "ls_max_tokens": 7,
                                    "ls_stop": ["\n"]}
    with pytest.raises(ValueError, match="runs 'SmolLM2-135M-Instruct' only"):
        llm.invoke("hi", model="gpt-4o")
    with pytest.raises(ValueError, match="only text content"):
        llm.invoke([HumanMessage(content=[{"type": "image", "url": "http://x/y.png"}])])


def test_decode_correction_reaches_the_turn(runtime) -> None:  # type: ignore[no-untyped-def]
    """Messages read before are placed from cache; with a correction decode recomputes all of them (and the
    first token, from the same prefill, is the uncorrected call's)."""
    plain = ChunkCacheChatModel(runtime=runtime, mode="kvcomm+epic", max_tokens=6)
    plain.invoke(CONVERSATION)
    base = plain.invoke(CONVERSATION)
    fixed = ChunkCacheChatModel(runtime=runtime, mode="kvcomm+epic", max_tokens=6, decode_correction_steps=1)
    stream = list(fixed.stream(CONVERSATION))
    s, b = stream[-1].response_metadata["chunkcache"], base.response_metadata["chunkcache"]
    assert b["decode_pending"] == 0 and 0 < s["decode_pending"] < s["prompt_tokens"]
    assert base.content.startswith(stream[0].content) and stream[0].content
    with pytest.raises(ValueError, match="one, not both"):
        ChunkCacheChatModel(runtime=runtime, decode_correction=8, decode_correction_steps=1)
