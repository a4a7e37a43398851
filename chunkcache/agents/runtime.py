"""In-process multi-agent runtime: one turn, a fully connected round, a discussion, a sequential pipeline.

A turn binds its template into a BlendRequest and prefills it on the one prefill path (blend/blender.py) in
the chosen BlendConfig (`BlendConfig.named("kvcomm+epic")` by default), decodes, and, for the modes that place KV,
stores the response's KV as an ordinary chunk entry (ChunkSource.put_response), so the agents that read it
next start from the KV the generating agent already computed. Chunks are computed behind the same
precompute context as the RAG engine's (its system prompt), so a passage cached for RAG is a chunk hit for
an agent and the other way round: one key space, one bounded store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from chunkcache.agents.anchor_pool import AnchorPool
from chunkcache.agents.anchor_tensors import StoreAnchorTensors
from chunkcache.agents.config import AnchorConfig
from chunkcache.agents.template import AgentTemplate, CompiledTemplate, Message
from chunkcache.agents.workflows import Agent, pipeline_template, round_turn
from chunkcache.blend.blender import Blender, BlendResult, BlendStats
from chunkcache.blend.chunk_source import ChunkSource, KVStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.prefix_cache import PrefixCache
from chunkcache.blend.prompt import DEFAULT_SYSTEM, PromptBuilder, PromptTemplate
from chunkcache.config import EngineConfig
from chunkcache.config.settings import DEFAULT_CPU_BYTES
from chunkcache.runner.decode import SamplingConfig, decode, eos_token_ids
from chunkcache.runner.heap import heap_trimmer
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig

DEFAULT_CONFIG = BlendConfig.named("kvcomm+epic")  # the only mode meeting all three agents targets (BENCHMARKS.md)


@dataclass
class Turn:
    agent: str
    round: int
    message: Message
    stats: BlendStats

    @property
    def text(self) -> str:
        return self.message.text


class AgentRuntime:
    """runner: the model; store: chunk KV store (placeholder bases, responses), by default a CPU-tier
    `ChunkStore` bounded by store_bytes (LRU eviction), never an unbounded dict; source: an engine's chunk
    source instead (its store and precompute context); anchor_dir: persist the anchor pool there (None: in
    memory only); profile_root: where the model's calibrated ratios and critical layers are read (None: the
    default). `from_engine` / `from_config` share an engine's model, store, key space and profile root."""

    def __init__(self, runner: ModelRunner, store: KVStore | None = None, anchor_config: AnchorConfig = AnchorConfig(),
                 anchor_dir: str | Path | None = None, prefix_cache_entries: int = 8,
                 store_bytes: int = DEFAULT_CPU_BYTES, source: ChunkSource | None = None,
                 profile_root: Path | None = None) -> None:
        self.runner = runner
        self.tokenizer = runner.tokenizer
        if source is None:
            store = store if store is not None else ChunkStore(StoreConfig.memory_only(store_bytes))
            ctx = PromptBuilder(self.tokenizer, PromptTemplate.from_tokenizer(self.tokenizer, DEFAULT_SYSTEM))
            source = ChunkSource(runner, store, ctx.prefix_ids)
        self.source = source
        self.store = source.store
        if anchor_dir is not None:
            from chunkcache.agents.anchor_store import AnchorStore

            self.anchor_store = AnchorStore(anchor_dir, runner.fingerprint, runner.n_layers)
            self.pool = self.anchor_store.open_pool(anchor_config)
        else:  # anchor tensors are entries of the chunk store: bounded by its budgets, evicted with it
            self.anchor_store = None
            self.pool = AnchorPool(anchor_config, runner.fingerprint,
                                   loader=StoreAnchorTensors(self.store, runner.fingerprint, str(runner.device)))
        self.blender = Blender(runner, source, self.pool, PrefixCache(prefix_cache_entries), profile_root=profile_root)
        self.eos_ids = eos_token_ids(runner.model, self.tokenizer)
        self._trim = heap_trimmer()
        self._compiled: OrderedDict[AgentTemplate, CompiledTemplate] = OrderedDict()  # LRU of `compile_cache`
        self.compile_cache = 256
        self._generated: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # response text -> generated ids
        self.remember = 4096

    @classmethod
    def from_engine(cls, engine: ChunkCacheEngine, **kw: object) -> "AgentRuntime":
        """The engine's model and store (kw: the other constructor arguments)."""
        kw.setdefault("profile_root", engine.profile_root)
        return cls(engine.runner, source=engine.source, **kw)  # type: ignore[arg-type]

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
        """The template's token ids, compiled once; the last `compile_cache` templates are kept (a served chat
        makes one per conversation shape and literal text, so the cache is bounded)."""
        if template not in self._compiled:
            self._compiled[template] = CompiledTemplate.compile(template, self.tokenizer)
            while len(self._compiled) > self.compile_cache:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(template)
        return self._compiled[template]

    def prefill(self, template: AgentTemplate, values: dict[str, str | Message], cfg: BlendConfig = DEFAULT_CONFIG,
                reserve: int = 0) -> tuple[BlendResult, int]:
        """(prefill, prompt length) of one agent prompt, timed into stats.ttft_s."""
        req = self.compile(template).bind(values, self.tokenizer, self.runner.max_positions)
        t0 = time.perf_counter()
        pre = self.blender.prefill(req, cfg, reserve)
        if pre.logits.is_cuda:
            torch.cuda.synchronize()
        pre.stats.ttft_s = time.perf_counter() - t0
        return pre, req.num_tokens

    def keep_response(self, pre: BlendResult, prompt_len: int, answer: list[int]) -> None:
        """Store the response's KV (positions prompt_len.. of pre.cache) as an ordinary chunk entry, at position 0."""
        if not answer:
            return
        have = pre.cache.length - prompt_len
        if have < len(answer):
            with torch.inference_mode():
                self.runner.extend(torch.tensor(answer[have:], dtype=torch.int64, device=self.runner.device),
                                   pre.cache, decode=True)
        sl = slice(prompt_len, prompt_len + len(answer))
        self.source.put_response(tuple(answer), pre.cache.keys[:, :, sl], pre.cache.values[:, :, sl], prompt_len)

    def turn(self, template: AgentTemplate, values: dict[str, str | Message], cfg: BlendConfig = DEFAULT_CONFIG,
             sampling: SamplingConfig = SamplingConfig(max_new_tokens=32), author: str | None = None) -> Turn:
        pre, n = self.prefill(template, values, cfg, reserve=sampling.max_new_tokens + 1)
        with torch.inference_mode():
            ids = list(decode(self.runner, pre.cache, pre.logits, sampling, self.eos_ids))
        answer = [t for t in ids if t not in self.eos_ids]
        if cfg.places_kv:
            self.keep_response(pre, n, answer)
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        if answer:
            self._remember(text, tuple(answer))
        stats = pre.stats
        del pre
        self._trim()  # the turn's KV is freed: return the heap to the OS (bounded RSS in long runs)
        return Turn(author or template.name, 0, Message(text, tuple(answer), author), stats)

    def round(self, agents: list[Agent], question: str, context: str | None = None,
              previous: dict[str, Message] | None = None, cfg: BlendConfig = DEFAULT_CONFIG,
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
                   cfg: BlendConfig = DEFAULT_CONFIG,
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
                 cfg: BlendConfig = DEFAULT_CONFIG,
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
