"""LangChain's standard chat model suites (langchain-tests) on ChunkCacheChatModel with the real default model.

Capabilities not claimed, so the suites skip their tests by their own detection: tool calling, tool choice
and structured output (SmolLM2-135M was not trained to emit tool calls or follow JSON schemas reliably;
claiming them would mean parsing whatever it writes), image / audio / PDF / Anthropic-style inputs (a
text-only model), per-call model override (one model is loaded per runtime), serialisation (the model
holds a loaded runtime) and the VCR-recorded stream benchmark (no HTTP to record). Initialisation from the
environment is the engine configuration (CHUNKCACHE_*); usage reports cache_read (reused prompt tokens).
"""

from __future__ import annotations

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from chunkcache.agents.langchain_chat import ChunkCacheChatModel
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.config import EngineConfig
from chunkcache.runner.runner import ModelRunner

MAX_TOKENS = 8  # the suites' own prompts ("Hello", "Write me 2 haikus") need no more to check the protocol
_RUNTIME: dict[str, AgentRuntime] = {}


@pytest.fixture(autouse=True, scope="module")
def runtime(smollm):  # type: ignore[no-untyped-def]
    """One runtime over the real model for every test of the suites (the suites build models from properties)."""
    torch.set_num_threads(1)
    _RUNTIME["rt"] = AgentRuntime(ModelRunner(smollm.model, smollm.tokenizer))
    yield _RUNTIME["rt"]
    _RUNTIME.pop("rt").close()


class _Params:
    @property
    def chat_model_class(self) -> type[ChunkCacheChatModel]:
        return ChunkCacheChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"runtime": _RUNTIME["rt"], "mode": "kvcomm+epic"}

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChunkCacheChatModelUnit(_Params, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict:
        return {**super().standard_chat_model_params, "max_tokens": MAX_TOKENS}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        """No runtime given: the model loads the engine that CHUNKCACHE_* describes (memory store, 1 thread)."""
        env = {"CHUNKCACHE_STORE": "memory", "CHUNKCACHE_THREADS": "1"}
        return env, {"max_tokens": MAX_TOKENS}, {"engine_config": EngineConfig(store="memory", threads=1),
                                                 "model_name": "SmolLM2-135M-Instruct"}


class TestChunkCacheChatModelIntegration(_Params, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {**super().chat_model_params, "max_tokens": MAX_TOKENS}

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """A conversation whose earlier messages were read before: their KV is reused, cache_read > 0."""
        llm = ChunkCacheChatModel(**self.chat_model_params)
        first = [SystemMessage("You answer in one sentence."), HumanMessage("What is the capital of France?")]
        reply = llm.invoke(first)
        follow = first + [reply, HumanMessage("And of Germany?")]
        if stream:
            full = None
            for chunk in llm.stream(follow):
                full = chunk if full is None else full + chunk
            msg = full
        else:
            msg = llm.invoke(follow)
        assert msg.usage_metadata["input_token_details"]["cache_read"] > 0, msg.usage_metadata
        return msg
