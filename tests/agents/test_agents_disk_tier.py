"""Agent prompts on a disk-only store: placeholder chunks stream layer by layer like RAG chunks, and match
the in-memory result; the KVCOMM step reads its bases from the same store."""

import torch
from agents_tiny import PREFIX, prompt

from chunkcache.agents.anchor_pool import AnchorPool
from chunkcache.agents.anchor_tensors import StoreAnchorTensors
from chunkcache.agents.config import AnchorConfig
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


def test_agent_prompt_streams_from_disk(tiny_runner, tmp_path):
    store = ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path)))
    fp = tiny_runner.fingerprint
    disk = Blender(tiny_runner, ChunkSource(tiny_runner, store, (6, 7, 8)),
                   AnchorPool(AnchorConfig(), fp, loader=StoreAnchorTensors(store, fp)))
    mem = Blender(tiny_runner, ChunkSource(tiny_runner, DictStore(), (6, 7, 8)), AnchorPool(AnchorConfig(), fp))
    cfg = BlendConfig(mode="cacheblend", recompute_ratio=0.3)
    p = prompt(4)
    cold = disk.prefill(p, cfg)
    assert cold.stats.chunk_misses == 4 and cold.stats.chunk_hits == 0  # the prefix, a, its follow text, b
    warm = disk.prefill(p, cfg)
    assert warm.stats.chunk_hits == 4 and warm.stats.chunk_misses == 0
    assert [s["base"] for s in warm.stats.slots] == ["chunk_hit", "chunk_hit"]
    ref = mem.prefill(p, cfg)
    torch.testing.assert_close(warm.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert warm.stats.recomputed_tokens == round(0.3 * (p.suffix_start - len(PREFIX)))
    kv = BlendConfig.named("kvcomm")
    for seed in (1, 2):
        disk.prefill(prompt(seed), kv)
    again = disk.prefill(prompt(1), kv)
    assert again.stats.anchors_hit == 2 and [s["base"] for s in again.stats.slots] == ["chunk_hit", "chunk_hit"]
    store.close()
