"""In-process multi-agent runtime: one turn, a fully connected round, a discussion, a sequential pipeline.

Every turn prefills its prompt in the chosen mode (AgentPrefillConfig.mode), decodes, and (for the
modes that reuse placeholder KV) stores the response's KV rotated back to position 0, so the agents
that read it next start from the KV the generating agent already computed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from chunkcache.agents.anchor_pool import AnchorPool
from chunkcache.agents.base_kv import BaseSource
from chunkcache.agents.config import AgentPrefillConfig, AnchorConfig
from chunkcache.agents.prefill import AgentPrefill, AgentPrefiller, TurnStats
from chunkcache.agents.prefix_cache import PrefixCache
from chunkcache.agents.template import AgentTemplate, CompiledTemplate, Message
from chunkcache.agents.workflows import Agent, pipeline_template, round_turn
from chunkcache.blend.chunk_source import KVStore
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.prompt import PromptTemplate
from chunkcache.config import EngineConfig
from chunkcache.config.settings import DEFAULT_CPU_BYTES
from chunkcache.runner.decode import SamplingConfig, decode
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig

PRECOMPUTE_SYSTEM = "You are a helpful assistant."


@dataclass
class Turn:
    agent: str
    round: int
    message: Message
    stats: TurnStats

    @property
    def text(self) -> str:
        return self.message.text


class AgentRuntime:
    """runner: the model; store: chunk KV store (placeholder bases, responses), by default a CPU-tier
    `ChunkStore` bounded by store_bytes (LRU eviction), never an unbounded dict; anchor_dir: persist the
    anchor pool there (None: in memory only). Build it from an engine or a config with `from_engine` /
    `from_config` to share that engine's model and store."""

    def __init__(self, runner: ModelRunner, store: KVStore | None = None, anchor_config: AnchorConfig = AnchorConfig(),
                 anchor_dir: str | Path | None = None, prefix_cache_entries: int = 8,
                 store_bytes: int = DEFAULT_CPU_BYTES) -> None:
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.store = store if store is not None else ChunkStore(StoreConfig.memory_only(store_bytes))
        ctx = PromptTemplate.from_tokenizer(self.tokenizer, PRECOMPUTE_SYSTEM).prefix_text
        self.bases = BaseSource(runner, self.store, tuple(self.tokenizer.encode(ctx, add_special_tokens=False)))
        if anchor_dir is not None:
            from chunkcache.agents.anchor_store import AnchorStore

            self.anchor_store = AnchorStore(anchor_dir, runner.fingerprint, runner.n_layers)
            self.pool = self.anchor_store.open_pool(anchor_config)
        else:
            self.anchor_store = None
            self.pool = AnchorPool(anchor_config, runner.fingerprint)
        self.prefiller = AgentPrefiller(runner, self.bases, self.pool, PrefixCache(prefix_cache_entries))
        gen_eos = getattr(runner.model.generation_config, "eos_token_id", None)
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        self.eos_ids = {int(t) for t in [self.tokenizer.eos_token_id, *gen_eos] if t is not None}
        self._compiled: dict[AgentTemplate, CompiledTemplate] = {}
        self._generated: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # response text -> generated ids
        self.remember = 4096

    @classmethod
    def from_engine(cls, engine: ChunkCacheEngine, **kw: object) -> "AgentRuntime":
        """The engine's model and store (kw: the other constructor arguments)."""
        return cls(engine.runner, engine.source.store, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, cfg: EngineConfig, **kw: object) -> "AgentRuntime":
        """Load the engine cfg describes (device, dtype, store with its budgets) and run the agents on it."""
        return cls.from_engine(ChunkCacheEngine.from_config(cfg), **kw)

    def generated_ids(self, text: str) -> tuple[int, ...] | None:
        """The token ids a response with this exact text was generated as (None if unknown)."""
        return self._generated.get(text)

    def _remember(self, text: str, ids: tuple[int, ...]) -> None:
        self._generated[text] = ids
        self._generated.move_to_end(text)
        while len(self._generated) > self.remember:
            self._generated.popitem(last=False)

    def compile(self, template: AgentTemplate) -> CompiledTemplate:
        if template not in self._compiled:
            self._compiled[template] = CompiledTemplate.compile(template, self.tokenizer)
        return self._compiled[template]

    def prefill(self, template: AgentTemplate, values: dict[str, str | Message], cfg: AgentPrefillConfig,
                reserve: int = 0) -> tuple[AgentPrefill, int]:
        """(prefill, prompt length) of one agent prompt, timed into stats.ttft_s."""
        prompt = self.compile(template).bind(values, self.tokenizer, self.runner.max_positions)
        t0 = time.perf_counter()
        pre = self.prefiller.prefill(prompt, cfg, reserve)
        pre.stats.ttft_s = time.perf_counter() - t0
        return pre, prompt.num_tokens

    def keep_response(self, pre: AgentPrefill, prompt_len: int, answer: list[int]) -> None:
        """Store the response's KV (positions prompt_len.. of pre.cache) as its base, at position 0."""
        if not answer:
            return
        have = pre.cache.length - prompt_len
        if have < len(answer):
            with torch.inference_mode():
                self.runner.extend(torch.tensor(answer[have:], device=self.runner.device), pre.cache)
        sl = slice(prompt_len, prompt_len + len(answer))
        self.bases.put_response(tuple(answer), pre.cache.keys[:, :, sl], pre.cache.values[:, :, sl], prompt_len)

    def turn(self, template: AgentTemplate, values: dict[str, str | Message], cfg: AgentPrefillConfig,
             sampling: SamplingConfig = SamplingConfig(max_new_tokens=32), author: str | None = None) -> Turn:
        pre, n = self.prefill(template, values, cfg, reserve=sampling.max_new_tokens + 1)
        with torch.inference_mode():
            ids = list(decode(self.runner, pre.cache, pre.logits, sampling, self.eos_ids))
        answer = [t for t in ids if t not in self.eos_ids]
        if cfg.mode not in ("dense", "prefix"):
            self.keep_response(pre, n, answer)
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        if answer:
            self._remember(text, tuple(answer))
        return Turn(author or template.name, 0, Message(text, tuple(answer), author), pre.stats)

    def round(self, agents: list[Agent], question: str, context: str | None = None,
              previous: dict[str, Message] | None = None, cfg: AgentPrefillConfig = AgentPrefillConfig(),
              sampling: SamplingConfig = SamplingConfig(max_new_tokens=32), round_idx: int = 1) -> list[Turn]:
        """Fully connected round: every agent reads the question (and context); with `previous`
        (agent name -> its last message) also its own previous message and every other agent's."""
        _check_agents(agents)
        if previous is not None and set(previous) != {a.name for a in agents}:
            raise ValueError(f"previous messages are for {sorted(previous)}, agents are {[a.name for a in agents]}")
        turns = []
        for a in agents:
            tpl, values = round_turn(a, agents, question, context, previous)
            t = self.turn(tpl, values, cfg, sampling, author=a.name)
            t.round = round_idx
            turns.append(t)
        return turns

    def discussion(self, agents: list[Agent], question: str, context: str | None = None, rounds: int = 2,
                   cfg: AgentPrefillConfig = AgentPrefillConfig(),
                   sampling: SamplingConfig = SamplingConfig(max_new_tokens=32)) -> list[list[Turn]]:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        out, previous = [], None
        for r in range(1, rounds + 1):
            turns = self.round(agents, question, context, previous, cfg, sampling, r)
            previous = {t.agent: t.message for t in turns}
            out.append(turns)
        return out

    def pipeline(self, agents: list[Agent], question: str, context: str | None = None,
                 cfg: AgentPrefillConfig = AgentPrefillConfig(),
                 sampling: SamplingConfig = SamplingConfig(max_new_tokens=32)) -> list[Turn]:
        """Sequential pipeline: stage i reads the question and the messages of stages 0..i-1."""
        _check_agents(agents)
        turns: list[Turn] = []
        for i, a in enumerate(agents):
            values: dict[str, str | Message] = {"question": question}
            if context is not None:
                values["context"] = context
            values.update({f"msg_{t.agent}": t.message for t in turns})
            t = self.turn(pipeline_template(a, agents[:i], context is not None), values, cfg, sampling, author=a.name)
            t.round = i + 1
            turns.append(t)
        return turns

    def close(self) -> None:
        if self.anchor_store is not None:
            self.anchor_store.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def _check_agents(agents: list[Agent]) -> None:
    if not agents:
        raise ValueError("agents: the agent list is empty")
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ValueError(f"agents: duplicate agent names in {names}")
