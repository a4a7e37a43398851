"""One key space: a passage precomputed by the RAG engine is a chunk hit for an agent turn, and back."""

import torch

from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.workflows import Agent, round_template
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig

AGENTS = [Agent("alice", "You are a historian."), Agent("bob", "You are a geographer.")]
PASSAGE = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889."
OTHER = "Mount Fuji is the highest mountain in Japan, on the island of Honshu."


def test_rag_passage_is_a_chunk_hit_for_an_agent(smollm):
    torch.set_num_threads(1)
    runner = ModelRunner(smollm.model, smollm.tokenizer)
    engine = ChunkCacheEngine(runner, ChunkStore(StoreConfig.memory_only(50_000_000)))
    [key] = engine.precompute([PASSAGE])
    ids = engine.prompts.chunk_ids(PASSAGE)
    assert AgentRuntime(runner).source.key(ids) == key  # a runtime on its own store computes the same key

    rt = AgentRuntime.from_engine(engine)
    tpl = round_template(AGENTS[0], AGENTS[1:], True, True)
    for name in ("blend", "kvcomm"):
        pre, _ = rt.prefill(tpl, {"context": PASSAGE, "question": "When was it completed?"}, BlendConfig.named(name))
        ctx = pre.stats.slots[0]
        assert ctx["placeholder"] == "context" and ctx["base"] == "chunk_hit", (name, pre.stats.slots)
    cold, _ = rt.prefill(tpl, {"context": OTHER, "question": "Where is it?"}, BlendConfig.named("blend"))
    assert cold.stats.slots[0]["base"] == "computed"
    _, hit = engine.source.get(engine.prompts.chunk_ids(OTHER))
    assert hit  # the passage an agent read first is a hit for the RAG engine
    rt.close()
