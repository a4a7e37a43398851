"""Model fingerprint: KV computed by one model/tokenizer/dtype must never be served to another.

The fingerprint is part of every chunk key (store/keys.py) and of every stored entry's header, so two
engines share entries only when their fingerprints are equal. It covers:
  - the architecture fields that shape the KV (layers, heads, head_dim, RoPE, norm eps, vocab);
  - the parameter dtype (an fp32 and a bf16 engine over the same checkpoint compute different KV);
  - every tensor of the state dict, whole: name, dtype, shape and bytes through xxh3-128 (a merged LoRA,
    a fine-tune or a re-quantised copy changes some tensor somewhere; sampled rows would miss it). It
    reads each weight once at start-up: 0.06-0.16 s for the 135M-parameter default model in fp32 on 2 cores;
  - the tokenizer vocabulary (the same ids must mean the same text).
"""

from __future__ import annotations

import hashlib
import json

import torch
import xxhash

_ARCH = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "head_dim", "vocab_size", "rope_theta", "rope_parameters", "rope_scaling", "rms_norm_eps")


def weights_digest(model: torch.nn.Module) -> str:
    """xxh3-128 hex over every state-dict tensor (name, dtype, shape, bytes), in name order."""
    h = xxhash.xxh3_128()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module, tokenizer: object | None = None) -> str:
    """32 hex of sha256 over the architecture config, the parameter dtype, weights_digest and the vocabulary."""
    cfg = model.config.to_dict()
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    h = hashlib.sha256(json.dumps({"arch": {k: cfg.get(k) for k in _ARCH}, "dtype": dtype,
                                   "weights": weights_digest(model)}, sort_keys=True, default=str).encode())
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return h.hexdigest()[:32]


def derived_fingerprint(base: str, **parts: str) -> str:
    """32 hex of sha256 over a fingerprint and named parts: an engine whose layers differ from the model's."""
    return hashlib.sha256(json.dumps({"base": base, **parts}, sort_keys=True).encode()).hexdigest()[:32]
