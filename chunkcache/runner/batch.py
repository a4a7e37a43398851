"""One decode step over B running sequences of ragged lengths, each with its own `KVCache`.

`decode_batch(runner, tokens, caches)` is `ModelRunner.decode_step` (the readable single-sequence
reference) applied to B sequences at once:
- the norms, the Q/K/V and output projections and the MLP run once over the [B, H] rows (the weights
  are read once per step, which is what makes batched decoding cheaper than B single steps);
- RoPE rotates row b at its own position, caches[b].length;
- each row's K/V go into its own cache through `KVCache.write` (the only writer);
- attention runs per sequence over that sequence's cache (SDPA with GQA, one query, no mask), so no
  cache is copied into a padded batch: the caches stay where they are, and their lengths may differ.

Invariants: every cache has room for one more position (`reserve` is called here; the prefill's
reserve makes it a no-op) and every position stays under the model's context (the caller checks);
after the step caches[b].length grew by one. Tensors are built on the runner's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner, _rotate_half


@torch.inference_mode()
def decode_batch(runner: ModelRunner, tokens: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
    """tokens [B] int64 (row b is the next token of caches[b]) -> next-token logits [B, vocab] fp32."""
    r = runner
    b = len(caches)
    if tokens.shape != (b,):
        raise ValueError(f"decode_batch: tokens of shape {tuple(tokens.shape)} for {b} caches; expected ({b},)")
    if b == 0:
        raise ValueError("decode_batch: no sequences")
    starts = [c.length for c in caches]  # host-side positions: no device sync
    for c, pos in zip(caches, starts, strict=True):
        c.reserve(pos + 1)
    positions = torch.tensor(starts, dtype=torch.int64, device=r.device)  # [B]
    hidden = r.embed(tokens)  # [B, H]
    cos, sin = r.model.model.rotary_emb(hidden[None], positions[None])  # [1, B, d] each
    cos, sin = cos[0, :, None].to(hidden.dtype), sin[0, :, None].to(hidden.dtype)  # [B, 1, d]
    g = r.n_heads // r.n_kv_heads
    for layer_idx in range(r.n_layers):
        layer = r.decode_layers[layer_idx]
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(x).view(b, r.n_heads, r.head_dim)  # [B, n_heads, d]
        k = attn.k_proj(x).view(b, r.n_kv_heads, r.head_dim)  # [B, n_kv, d]
        v = attn.v_proj(x).view(b, r.n_kv_heads, r.head_dim)  # [B, n_kv, d]
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        outs = []
        for row, (cache, pos) in enumerate(zip(caches, starts, strict=True)):
            cache.write(layer_idx, slice(pos, pos + 1), k[row, :, None], v[row, :, None])  # [n_kv, 1, d] each
            keys, values = cache.layer(layer_idx)  # [n_kv, pos + 1, d]
            outs.append(F.scaled_dot_product_attention(q[row, :, None][None], keys[None], values[None],
                                                       scale=r.scale, enable_gqa=g > 1)[0, :, 0])  # [n_heads, d]
        o = torch.stack(outs).reshape(b, r.n_heads * r.head_dim)  # [B, n_heads*d]
        hidden = hidden + attn.o_proj(o)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return r.logits(hidden)
