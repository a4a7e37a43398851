"""Shared helpers: a two-placeholder prompt layout in raw token ids for the tiny random llama."""

import torch

from chunkcache.agents.anchor_pool import AnchorPool
from chunkcache.agents.config import AnchorConfig
from chunkcache.agents.template import AgentTemplate, CompiledTemplate, Message, Slot
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.prefix_cache import PrefixCache

PREFIX = (1, 2, 3, 4, 5)
TEMPLATE = AgentTemplate("t", "role", "{a} then {b} end")


def compiled(prefix=PREFIX) -> CompiledTemplate:
    return CompiledTemplate(TEMPLATE, prefix, (Slot("a", (9, 10, 11), "reader-a"), Slot("b", (), "reader-b")),
                            (12, 13, 14, 15))


def content(seed: int, n: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(20, 256, (n,), generator=g).tolist())


def request(a: tuple[int, ...], b: tuple[int, ...], prefix=PREFIX):
    """[prefix][a][9 10 11][b][12 13 14 15] as the blend request the template binds to."""
    return compiled(prefix).bind({"a": Message("a", a), "b": Message("b", b)}, None, 512)


def prompt(seed: int, la=24, lb=17, prefix=PREFIX):
    return request(content(seed, la), content(seed + 100, lb), prefix)


def prefiller(runner, cfg=AnchorConfig(), pool=None) -> Blender:
    source = ChunkSource(runner, DictStore(), context_ids=(6, 7, 8))
    return Blender(runner, source, pool if pool is not None else AnchorPool(cfg, runner.fingerprint), PrefixCache(4))


def dense(runner, p):
    return prefiller(runner).prefill(p, BlendConfig(mode="full"))
