"""The LangGraph example graph on ChunkCacheChatModel: message KV reuse through the plugin."""

import importlib.util
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from chunkcache.agents.config import AnchorConfig
from chunkcache.agents.langchain_chat import ChunkCacheChatModel
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.runner.runner import ModelRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agents_langgraph.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("agents_langgraph_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runner(smollm):
    return ModelRunner(smollm.model, smollm.tokenizer)


def test_graph_reuses_message_kv(example, runner):
    # entropy_threshold=1: reuse whenever two anchors match, so the test does not hinge on the admission policy
    rt = AgentRuntime(runner, anchor_config=AnchorConfig(entropy_threshold=1.0))
    llm = ChunkCacheChatModel(runtime=rt, mode="kvcomm", max_tokens=6)
    # anchors must span at least the new sample: ask the longest questions first
    questions = sorted(example.QUESTIONS, key=lambda q: -len(runner.tokenizer.encode(q)))[:3]
    out = example.run(llm, questions)
    assert [sorted(r["answers"]) for r in out] == [sorted(example.ROLES)] * 3
    first = out[0]["stats"]
    assert all(s["dense_fallback"] and s["anchors_added"] >= 1 for s in first.values())
    for r in out:  # the critic reads the researcher's reply as the KV the researcher's call computed
        critic = {s["placeholder"]: s["base"] for s in r["stats"]["critic"]["slots"]}
        assert critic["m1"] == "response", critic
        assert r["stats"]["writer"]["prompt_tokens"] > r["stats"]["critic"]["prompt_tokens"]
    last = out[-1]["stats"]
    assert all(s["anchors_hit"] >= 1 and s["reused_tokens"] > 0 for s in last.values()), last
    assert all(s["ttft_s"] > 0 for r in out for s in r["stats"].values())


def test_chat_model_maps_messages_and_rejects_bad_input(runner):
    llm = ChunkCacheChatModel(runtime=AgentRuntime(runner), mode="blend", max_tokens=4)
    tpl, values = llm.to_template([SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello", name="bot"),
                                   HumanMessage("Bye")])
    assert tpl.system == "Be brief."  # laid out by the model's chat template, names inside their turns
    assert tpl.frame == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n",
                         "<|im_end|>\n<|im_start|>assistant\n")
    assert tpl.body == "{m0}<|im_end|>\n<|im_start|>assistant\n{m1}<|im_end|>\n<|im_start|>user\n{m2}"
    assert list(values.values()) == ["Hi", "Hello", "Bye"]  # text from outside: documents (plain str)
    reply = llm.invoke([HumanMessage("Name a color.")])
    assert isinstance(reply.content, str) and reply.response_metadata["chunkcache"]["mode"] == "blend"
    with pytest.raises(ValueError, match="empty"):
        llm.invoke([])
    with pytest.raises(ValueError, match="nothing but a system message"):
        llm.invoke([SystemMessage("x")])
    with pytest.raises(ValueError, match="mode must be one of"):
        ChunkCacheChatModel(runtime=llm.runtime, mode="fast")
