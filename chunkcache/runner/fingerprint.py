"""Model fingerprint: KV computed by one model/tokenizer must never be served to another."""

from __future__ import annotations

import hashlib
import json

import torch


def model_fingerprint(model: torch.nn.Module, tokenizer: object | None = None) -> str:
    """sha256 over the architecture config, a sample of the weights and the tokenizer vocabulary.

    Weight sampling (first and last rows of the embedding and of every layer's k_proj) keeps it fast
    while catching a fine-tune or a different checkpoint of the same architecture.
    """
    cfg = model.config.to_dict()
    keep = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "rope_theta", "rope_parameters", "rope_scaling", "rms_norm_eps")
    h = hashlib.sha256(json.dumps({k: cfg.get(k) for k in keep}, sort_keys=True, default=str).encode())
    inner = model.model
    tensors = [inner.embed_tokens.weight] + [layer.self_attn.k_proj.weight for layer in inner.layers]
    for t in tensors:
        sample = torch.cat((t[:2].flatten(), t[-2:].flatten())).detach().to("cpu", torch.float32)
        h.update(sample.numpy().tobytes())
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return h.hexdigest()[:32]
