"""The agents runtime never defaults to an unbounded store: its KV lives in a budgeted, evicting CPU tier."""

import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.workflows import Agent
from chunkcache.config.settings import DEFAULT_CPU_BYTES
from chunkcache.runner.decode import SamplingConfig
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore

AGENTS = [Agent("alice", "You are a historian."), Agent("bob", "You are a geographer.")]
CONTEXT = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889."


def test_default_store_is_bounded_and_evicts(smollm):
    torch.set_num_threads(1)
    runner = ModelRunner(smollm.model, smollm.tokenizer)
    default = AgentRuntime(runner)
    assert isinstance(default.store, ChunkStore)
    assert default.store.stats()["tiers"]["cpu"]["budget_bytes"] == DEFAULT_CPU_BYTES

    budget = 400_000  # SmolLM2 KV is about 46 KB per token: a few short chunks fit, a pipeline does not
    rt = AgentRuntime(runner, store_bytes=budget)
    turns = rt.pipeline(AGENTS, "Who built the Eiffel Tower?", context=CONTEXT, cfg=BlendConfig.named("kvcomm"),
                        sampling=SamplingConfig(max_new_tokens=4))
    assert len(turns) == 2
    cpu = rt.store.stats()["tiers"]["cpu"]
    assert cpu["budget_bytes"] == budget
    assert cpu["puts"] > cpu["entries"] and cpu["evictions"] > 0
    assert 0 < cpu["bytes"] <= budget
    rt.close()
    default.close()
