"""Cache keys tell models apart: a LoRA-merged copy of the tiny llama, or the same weights run in bf16,
never hit the base fp32 model's entries in a shared store."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_llama

from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig

CONTEXT, CHUNK = (1, 2, 3), tuple(range(10, 30))


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    """Weights exactly representable in bf16, as a bf16 checkpoint loaded in fp32 is."""
    model = tiny_llama(seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def lora_merged(model: torch.nn.Module, rank: int = 4, alpha: float = 8.0) -> torch.nn.Module:
    """W + (alpha / rank) B A on q_proj and v_proj of every layer, as peft's merge_and_unload leaves it."""
    merged = copy.deepcopy(model)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for layer in merged.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj):
                out_f, in_f = proj.weight.shape
                a, b = torch.randn(rank, in_f, generator=g) * 0.01, torch.randn(out_f, rank, generator=g) * 0.01
                proj.weight.add_((alpha / rank) * (b @ a))
    return merged


def test_fingerprint_covers_all_weights_and_the_dtype(base: torch.nn.Module) -> None:
    fps = {ModelRunner(m).fingerprint for m in (base, lora_merged(base), copy.deepcopy(base).to(torch.bfloat16))}
    assert len(fps) == 3
    assert ModelRunner(copy.deepcopy(base)).fingerprint == ModelRunner(base).fingerprint  # deterministic


@pytest.mark.parametrize("variant", ["lora_merged", "bf16"])
def test_variant_never_hits_the_base_models_entries(base: torch.nn.Module, variant: str) -> None:
    other = lora_merged(base) if variant == "lora_merged" else copy.deepcopy(base).to(torch.bfloat16)
    with ChunkStore(StoreConfig.memory_only()) as store:
        base_src = ChunkSource(ModelRunner(base), store, CONTEXT)
        assert base_src.get(CHUNK)[1] is False and base_src.get(CHUNK)[1] is True  # stored, then a hit
        other_src = ChunkSource(ModelRunner(other), store, CONTEXT)
        kv, hit = other_src.get(CHUNK)
        assert not hit and kv.keys.dtype == next(other.parameters()).dtype
        assert not torch.equal(kv.keys.float(), base_src.get(CHUNK)[0].keys.float())  # its own KV, not the base's
