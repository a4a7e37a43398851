"""Shared helpers: a two-placeholder prompt layout in raw token ids for the tiny random llama."""

import torch

from chunkcache.agents.anchor_pool import AnchorPool
from chunkcache.agents.base_kv import BaseSource
from chunkcache.agents.config import AgentPrefillConfig, AnchorConfig
from chunkcache.agents.prefill import AgentPrefiller
from chunkcache.agents.prefix_cache import PrefixCache
from chunkcache.agents.template import AgentPrompt, AgentTemplate, CompiledTemplate, Slot
from chunkcache.blend.chunk_source import DictStore

PREFIX = (1, 2, 3, 4, 5)
TEMPLATE = AgentTemplate("t", "role", "{a} then {b} end")


def compiled(prefix=PREFIX) -> CompiledTemplate:
    return CompiledTemplate(TEMPLATE, prefix, (Slot("a", (9, 10, 11), "reader-a"), Slot("b", (), "reader-b")),
                            (12, 13, 14, 15))


def content(seed: int, n: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(20, 256, (n,), generator=g).tolist())


def prompt(seed: int, la=24, lb=17, prefix=PREFIX) -> AgentPrompt:
    """[prefix][a: la tokens][9 10 11][b: lb tokens][12 13 14 15]"""
    return AgentPrompt(compiled(prefix), (content(seed, la), content(seed + 100, lb)))


def prefiller(runner, cfg=AnchorConfig(), pool=None) -> AgentPrefiller:
    return AgentPrefiller(runner, BaseSource(runner, DictStore(), context_ids=(6, 7, 8)),
                          pool if pool is not None else AnchorPool(cfg, runner.fingerprint), PrefixCache(4))


def dense(runner, p):
    return prefiller(runner).prefill(p, AgentPrefillConfig(mode="dense"))
