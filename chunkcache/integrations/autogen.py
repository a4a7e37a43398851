"""AutoGen in-process: an `autogen_core.models.ChatCompletionClient` backed by the chunkcache agents runtime.

An AutoGen `AssistantAgent` team (`RoundRobinGroupChat`, `SelectorGroupChat`) on
`ChunkCacheChatCompletionClient` gets KVCOMM reuse with no server in between: every call is laid out
with the model's chat template, each message a placeholder chunk (agents/chat_layout.py, as for
LangChain), so an agent's reply, which the other agents receive as a `UserMessage` with its author as
`source`, is read back as the KV its author's call computed. Decoding goes through the server's
incremental detokenizer (agents/chat_turn.py): `create_stream` yields text pieces, then the
`CreateResult`; a `stop` sequence ends decoding. Usage is AutoGen's `RequestUsage` (prompt and
completion tokens, EOS not counted); the reuse of each call (reused prompt tokens, anchors, TTFT) is
in `client.last_stats` and, for the latest calls, `client.recent_stats`.

Model info as AutoGen defines it: no vision, no function calling, no JSON or structured output
(SmolLM2-135M; a request for them raises ValueError rather than being silently ignored).
`extra_create_args` takes max_tokens, temperature, top_p, seed and stop for one call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from autogen_core import CancellationToken
from autogen_core.models import (AssistantMessage, ChatCompletionClient, CreateResult, FunctionExecutionResultMessage,
                                 LLMMessage, ModelFamily, ModelInfo, RequestUsage, SystemMessage, UserMessage)

from chunkcache.agents.chat_layout import ChatMessage, chat_template
from chunkcache.agents.chat_turn import ChatTurn
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.blend.config import BlendConfig, check_mode_name
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config import EngineConfig
from chunkcache.runner.decode import SamplingConfig

MODEL_INFO = ModelInfo(vision=False, function_calling=False, json_output=False, family=ModelFamily.UNKNOWN,
                       structured_output=False, multiple_system_messages=True)
_CALL_ARGS = {"max_tokens", "temperature", "top_p", "seed", "stop"}


def _text(content: object, what: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, str) for p in content):
        return "".join(content)
    raise ValueError(f"{what}: only text content is supported (no images, no function calls)")


def to_chat(messages: Sequence[LLMMessage]) -> list[ChatMessage]:
    """AutoGen messages as chat-template messages; an agent's name (source) goes with its message."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, SystemMessage):
            out.append(ChatMessage("system", m.content))
        elif isinstance(m, UserMessage):
            out.append(ChatMessage("user", _text(m.content, f"messages[{i}]"), m.source))
        elif isinstance(m, AssistantMessage):
            out.append(ChatMessage("assistant", _text(m.content, f"messages[{i}]"), m.source))
        elif isinstance(m, FunctionExecutionResultMessage):
            out.append(ChatMessage("tool", "\n".join(r.content for r in m.content)))
        else:
            raise ValueError(f"messages[{i}]: unsupported message type {type(m).__name__}")
    return out


class ChunkCacheChatCompletionClient(ChatCompletionClient):
    """runtime: an AgentRuntime (model, store, anchor pool); mode: a BlendConfig.named name; max_tokens,
    temperature (0: greedy), top_p, seed, stop: the defaults of every call; recompute_ratio, decode_correction,
    decode_correction_steps: the BlendConfig fields of every call."""

    def __init__(self, runtime: AgentRuntime, mode: str = "kvcomm+epic", max_tokens: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                 recompute_ratio: float = 0.15, keep_stats: int = 256, decode_correction: int = 0,
                 decode_correction_steps: int = 0) -> None:
        self.runtime = runtime
        self.cfg = BlendConfig.named(check_mode_name(mode), recompute_ratio=recompute_ratio,
                                     decode_correction=decode_correction,
                                     decode_correction_steps=decode_correction_steps)
        self.sampling = SamplingConfig(max_tokens, temperature, top_p, seed)
        self.stop = list(stop or [])
        self.last_stats: dict = {}
        self.recent_stats: deque[dict] = deque(maxlen=keep_stats)
        self._actual = RequestUsage(0, 0)
        self._total = RequestUsage(0, 0)

    @classmethod
    def from_engine(cls, engine: ChunkCacheEngine, **kw: Any) -> "ChunkCacheChatCompletionClient":
        """A client over an AgentRuntime sharing engine's model and store (kw: the constructor's options)."""
        return cls(AgentRuntime.from_engine(engine), **kw)

    @classmethod
    def from_config(cls, cfg: EngineConfig, **kw: Any) -> "ChunkCacheChatCompletionClient":
        """Load the engine cfg describes and serve AutoGen agents on it."""
        return cls(AgentRuntime.from_config(cfg), **kw)

    def _turn(self, messages: Sequence[LLMMessage], tools: Sequence[Any], json_output: Any,
              extra: Mapping[str, Any]) -> ChatTurn:
        if tools:
            raise ValueError("tools: function calling is not supported by this model client (model_info)")
        if json_output:
            raise ValueError("json_output: JSON and structured output are not supported by this model client")
        unknown = sorted(set(extra) - _CALL_ARGS)
        if unknown:
            raise ValueError(f"extra_create_args: unknown {unknown} (known: {sorted(_CALL_ARGS)})")
        s = self.sampling
        sampling = SamplingConfig(int(extra.get("max_tokens", s.max_new_tokens)),
                                  float(extra.get("temperature", s.temperature)), float(extra.get("top_p", s.top_p)),
                                  extra.get("seed", s.seed))
        template, values = chat_template(self.runtime.tokenizer, to_chat(messages), self.runtime.generated_ids)
        return ChatTurn(self.runtime, template, values, self.cfg, sampling, list(extra.get("stop", self.stop)))

    async def create(self, messages: Sequence[LLMMessage], *, tools: Sequence[Any] = [],
                     tool_choice: Any = "auto", json_output: Any = None, extra_create_args: Mapping[str, Any] = {},
                     cancellation_token: CancellationToken | None = None) -> CreateResult:
        result = None
        async for item in self.create_stream(messages, tools=tools, json_output=json_output,
                                             extra_create_args=extra_create_args,
                                             cancellation_token=cancellation_token):
            result = item
        assert isinstance(result, CreateResult)
        return result

    async def create_stream(self, messages: Sequence[LLMMessage], *, tools: Sequence[Any] = [],
                            tool_choice: Any = "auto", json_output: Any = None,
                            extra_create_args: Mapping[str, Any] = {},
                            cancellation_token: CancellationToken | None = None
                            ) -> AsyncGenerator[str | CreateResult, None]:
        turn = self._turn(messages, tools, json_output, extra_create_args)
        pieces, done = iter(turn), object()
        try:
            while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
                yield piece  # type: ignore[misc]
                if cancellation_token is not None and cancellation_token.is_cancelled():
                    break
        finally:
            await asyncio.to_thread(turn.close)
        usage = RequestUsage(prompt_tokens=turn.prompt_tokens, completion_tokens=len(turn.token_ids))
        self._actual = usage
        self._total = RequestUsage(self._total.prompt_tokens + usage.prompt_tokens,
                                   self._total.completion_tokens + usage.completion_tokens)
        self.last_stats = turn.stats
        self.recent_stats.append(turn.stats)
        yield CreateResult(finish_reason=turn.finish_reason, content=turn.text, usage=usage, cached=False)

    async def close(self) -> None:
        """Nothing to release: the runtime belongs to its creator (`runtime.close()` closes its store)."""

    def actual_usage(self) -> RequestUsage:
        return self._actual

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Any] = []) -> int:
        template, values = chat_template(self.runtime.tokenizer, to_chat(messages), self.runtime.generated_ids)
        return self.runtime.compile(template).bind(values, self.runtime.tokenizer, 1 << 62).num_tokens

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Any] = []) -> int:
        return self.runtime.runner.max_positions - self.count_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> Any:  # deprecated in AutoGen; model_info is the current form
        return {k: MODEL_INFO[k] for k in ("vision", "function_calling", "json_output")}

    @property
    def model_info(self) -> ModelInfo:
        return MODEL_INFO
