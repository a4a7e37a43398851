"""A langchain-core chat model backed by chunkcache: LangGraph graphs get message KV reuse unchanged.

Each call lays its messages out with the model's own chat template (agents/chat_layout.py): the
first system message is the agent's role, every other message is one placeholder chunk between the
template's turn markup, and the prompt ends with the template's generation prompt. A message this
model generated is recognised by its text and read back as the token ids it was generated as, so
its base KV is the KV the generating call already computed (rotated back to position 0); other
messages are prefilled once behind the fixed precompute context and shared by every agent that
reads them. Decoding streams through the server's incremental detokenizer (agents/chat_turn.py):
`stream` yields `AIMessageChunk`s, the last one (empty, `chunk_position="last"`) carrying the usage,
and a `stop` sequence ends decoding. LangChain's standard parameters: `max_tokens`, `temperature`,
`top_p`, `seed`, `stop`, also per call. Per-turn stats (TTFT, reused tokens, anchors hit/added,
fallbacks) are in `response_metadata["chunkcache"]`; `usage_metadata` counts prompt and generated
tokens (EOS not counted), `input_token_details.cache_read` the prompt tokens whose KV was reused.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, field_validator, model_validator

from chunkcache.agents.chat_layout import ChatMessage, chat_template
from chunkcache.agents.chat_turn import ChatTurn
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.blend.config import BlendConfig, check_mode_name
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config import EngineConfig, load_config
from chunkcache.runner.decode import SamplingConfig

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "function": "tool"}


def _text(msg: BaseMessage) -> str:
    if isinstance(msg.content, str):
        return msg.content
    parts = []
    for p in msg.content:
        if isinstance(p, dict) and p.get("type") not in (None, "text"):
            raise ValueError(f"{msg.type} message: only text content is supported, got a {p.get('type')!r} block")
        parts.append(p if isinstance(p, str) else p.get("text", ""))
    return "".join(parts)


def to_chat(messages: list[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages as chat-template messages (role, text, name)."""
    return [ChatMessage(_ROLES.get(m.type, getattr(m, "role", m.type)), _text(m), getattr(m, "name", None))
            for m in messages]


class ChunkCacheChatModel(BaseChatModel):
    """runtime: an AgentRuntime (model, store, anchor pool), or None to load one from engine_config (None: the
    configuration `chunkcache` itself reads, `load_config()`: CHUNKCACHE_* environment over defaults); mode: a
    BlendConfig.named name (full, prefix, kvcomm, blend, kvcomm+blend, ...); max_tokens, temperature (0: greedy),
    top_p, seed, stop: the defaults of every call; recompute_ratio, decode_correction, decode_correction_steps: the
    BlendConfig fields of every call."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    runtime: AgentRuntime | None = None
    engine_config: EngineConfig | None = None
    mode: str = "kvcomm+epic"
    max_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] | None = None
    recompute_ratio: float = 0.15
    decode_correction: int = 0
    decode_correction_steps: int = 0
    agent_name: str | None = None
    model_name: str | None = Field(None, alias="model", description="defaults to the model directory's name")
    streaming: bool = False

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, values: Any) -> Any:
        if isinstance(values, dict) and "max_new_tokens" in values:
            warnings.warn("ChunkCacheChatModel(max_new_tokens=...) is deprecated: use max_tokens",
                          DeprecationWarning, stacklevel=4)
            values = dict(values)
            values.setdefault("max_tokens", values.pop("max_new_tokens"))
        return values

    @model_validator(mode="after")
    def _load_and_name(self) -> "ChunkCacheChatModel":
        _ = self.blend  # a bad ratio or correction fails here, before a model loads
        if self.runtime is None:
            self.engine_config = self.engine_config if self.engine_config is not None else load_config()
            self.runtime = AgentRuntime.from_config(self.engine_config)
        if self.model_name is None:
            path = getattr(self.runtime.runner.model.config, "_name_or_path", "") or self.runtime.tokenizer.name_or_path
            self.model_name = Path(str(path)).name or "chunkcache"
        return self

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, mode: str) -> str:
        return check_mode_name(mode)

    @property
    def blend(self) -> BlendConfig:
        """The BlendConfig of every call (built at construction too, so a bad field fails there)."""
        return BlendConfig.named(self.mode, recompute_ratio=self.recompute_ratio,
                                 decode_correction=self.decode_correction,
                                 decode_correction_steps=self.decode_correction_steps)

    @classmethod
    def from_engine(cls, engine: ChunkCacheEngine, **kw: Any) -> "ChunkCacheChatModel":
        """A chat model over an AgentRuntime sharing engine's model and store (kw: the model's fields)."""
        return cls(runtime=AgentRuntime.from_engine(engine), **kw)

    @classmethod
    def from_config(cls, cfg: EngineConfig, **kw: Any) -> "ChunkCacheChatModel":
        """Load the engine cfg describes and chat over it (kw: the model's fields)."""
        return cls(engine_config=cfg, **kw)

    @property
    def _llm_type(self) -> str:
        return "chunkcache"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"mode": self.mode, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed, "model": self.runtime.runner.fingerprint}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="chunkcache", ls_model_name=kwargs.get("model") or self.model_name,
                                 ls_model_type="chat", ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    def to_template(self, messages: list[BaseMessage]):  # type: ignore[no-untyped-def]
        """The agent template and placeholder values of one call's messages (chat_layout.chat_template)."""
        return chat_template(self.runtime.tokenizer, to_chat(messages), self.runtime.generated_ids)

    def _turn(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> ChatTurn:
        model = kwargs.get("model")
        if model is not None and model != self.model_name:
            raise ValueError(f"model: this chat model runs {self.model_name!r} only, got {model!r}")
        if "max_new_tokens" in kwargs:
            warnings.warn("max_new_tokens is deprecated: use max_tokens", DeprecationWarning, stacklevel=4)
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        sampling = SamplingConfig(int(max_tokens), float(kwargs.get("temperature", self.temperature)),
                                  float(kwargs.get("top_p", self.top_p)), kwargs.get("seed", self.seed))
        template, values = self.to_template(messages)
        stop = stop if stop is not None else self.stop
        return ChatTurn(self.runtime, template, values, self.blend, sampling, stop, author=self.agent_name)

    def _metadata(self, turn: ChatTurn) -> dict[str, Any]:
        return {"model_name": self.model_name, "finish_reason": turn.finish_reason, "chunkcache": turn.stats}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        turn = self._turn(messages, stop, kwargs).run()
        meta = self._metadata(turn)
        msg = AIMessage(content=turn.text, name=self.agent_name, response_metadata=meta, usage_metadata=turn.usage)
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={"finish_reason":
                                                                                     turn.finish_reason})])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        turn = self._turn(messages, stop, kwargs)
        for piece in turn:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, name=self.agent_name))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(message=AIMessageChunk(content="", name=self.agent_name,
                                                         usage_metadata=turn.usage,  # type: ignore[arg-type]
                                                         response_metadata=self._metadata(turn),
                                                         chunk_position="last"),
                                  generation_info={"finish_reason": turn.finish_reason})
