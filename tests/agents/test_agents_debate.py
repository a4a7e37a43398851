"""The plain-Python debate example on the real model: the passage is computed once, arguments are read back
as their authors' KV, and later turns reuse most of their prompt."""

import importlib.util
from pathlib import Path

import pytest
import torch

from chunkcache.agents.runtime import AgentRuntime
from chunkcache.blend.config import BlendConfig
from chunkcache.runner.runner import ModelRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agents_debate.py"


@pytest.mark.slow
def test_debate_reuses_passage_and_arguments(smollm):
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("agents_debate_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rt = AgentRuntime(ModelRunner(smollm.model, smollm.tokenizer))
    turns = mod.run_debate(rt, rounds=2, cfg=BlendConfig.named("kvcomm+blend"), max_new=6)
    assert [(t.agent, t.round) for t in turns] == [("pro", 1), ("con", 1), ("pro", 2), ("con", 2), ("judge", 3)]
    assert all(t.text.strip() for t in turns)
    first = turns[0].stats.slots[0]
    assert first["placeholder"] == "passage" and first["base"] == "computed"
    for t in turns[1:]:  # the passage was computed once, by the first turn
        assert t.stats.slots[0]["base"] == "chunk_hit", t.stats.slots
    for t in turns[2:]:  # each argument read back as the KV its author computed
        msgs = [s for s in t.stats.slots if s["placeholder"] in ("own", "opponent", "pro", "con")]
        assert len(msgs) == 2 and all(s["base"] == "response" for s in msgs), t.stats.slots
    later = turns[2:]
    reuse = sum(t.stats.reused_tokens for t in later) / sum(t.stats.prompt_tokens for t in later)
    assert reuse > 0.5, [t.stats.slots for t in later]
    rt.close()
