"""The tiny random llama of the exactness tests, importable from any test module (`from tiny_models import ...`):
`from conftest import` resolves to whichever conftest.py pytest imported first under that name."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, **overrides):
    """A 4-layer random LlamaForCausalLM (GQA 4:2, head_dim 16), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa")).eval()
    with torch.no_grad():  # random init is too flat to give attention any structure; sharpen it
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
    return model
