"""A langchain-core chat model backed by chunkcache: LangGraph graphs get message KV reuse unchanged.

Each call maps its messages onto an agent template: the first system message is the agent's role
(its exact prefix), every other message becomes one placeholder chunk (`m0`, `m1`, ...) between
short role labels, and the prompt ends with the assistant turn. A message this model generated is
recognised by its text and read back as the token ids it was generated as, so its base KV is the
KV the generating call already computed (rotated back to position 0); other messages are
prefilled once behind the fixed precompute context and shared by every agent that reads them.
Per-turn stats (TTFT, reused tokens, anchors hit/added, fallbacks) are in
`AIMessage.response_metadata["chunkcache"]`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, field_validator

from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.template import AgentTemplate, Message
from chunkcache.blend.config import BlendConfig, check_mode_name
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config import EngineConfig
from chunkcache.runner.decode import SamplingConfig

DEFAULT_ROLE = "You are a helpful assistant."


def _label(msg: BaseMessage) -> str:
    role = {"human": "User", "ai": "Assistant", "tool": "Tool", "system": "System"}.get(msg.type, msg.type.title())
    name = getattr(msg, "name", None)
    return f"{role} ({name})" if name else role


def _text(msg: BaseMessage) -> str:
    if isinstance(msg.content, str):
        return msg.content
    parts = [p if isinstance(p, str) else p.get("text", "") for p in msg.content]
    return "".join(parts)


class ChunkCacheChatModel(BaseChatModel):
    """runtime: an AgentRuntime (model, store, anchor pool); mode: a BlendConfig.named name (full, prefix, kvcomm,
    blend, kvcomm+blend, ...)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runtime: AgentRuntime
    mode: str = "kvcomm+epic"
    max_new_tokens: int = 32
    recompute_ratio: float = 0.15
    agent_name: str | None = None

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, mode: str) -> str:
        return check_mode_name(mode)

    @classmethod
    def from_engine(cls, engine: ChunkCacheEngine, **kw: Any) -> "ChunkCacheChatModel":
        """A chat model over an AgentRuntime sharing engine's model and store (kw: the model's fields)."""
        return cls(runtime=AgentRuntime.from_engine(engine), **kw)

    @classmethod
    def from_config(cls, cfg: EngineConfig, **kw: Any) -> "ChunkCacheChatModel":
        """Load the engine cfg describes and chat over it (kw: the model's fields)."""
        return cls(runtime=AgentRuntime.from_config(cfg), **kw)

    @property
    def _llm_type(self) -> str:
        return "chunkcache"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"mode": self.mode, "max_new_tokens": self.max_new_tokens, "model": self.runtime.runner.fingerprint}

    def to_template(self, messages: list[BaseMessage]) -> tuple[AgentTemplate, dict[str, Message]]:
        """The agent template and placeholder values of one call's messages."""
        if not messages:
            raise ValueError("messages: the message list is empty")
        role, rest = DEFAULT_ROLE, list(messages)
        if isinstance(rest[0], SystemMessage):
            role, rest = _text(rest[0]), rest[1:]
        if not rest:
            raise ValueError("messages: nothing but a system message")
        body, values = [], {}
        for i, msg in enumerate(rest):
            text = _text(msg)
            if not text.strip():
                raise ValueError(f"messages[{i + (len(messages) - len(rest))}] ({msg.type}) is empty")
            body.append(f"{_label(msg)}: {{m{i}}}")
            ids = self.runtime.generated_ids(text)
            values[f"m{i}"] = Message(text, ids, getattr(msg, "name", None))
        name = "chat:" + "|".join(_label(m) for m in rest)
        return AgentTemplate(name, role or DEFAULT_ROLE, "\n\n".join(body)), values

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        template, values = self.to_template(messages)
        cfg = BlendConfig.named(self.mode, recompute_ratio=self.recompute_ratio)
        sampling = SamplingConfig(max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)))
        turn = self.runtime.turn(template, values, cfg, sampling, author=self.agent_name)
        text = turn.message.text
        for s in stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        meta = {"chunkcache": turn.stats.as_dict()}
        msg = AIMessage(content=text, name=self.agent_name, response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info=meta)])
