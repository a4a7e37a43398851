"""Run an HF llama/qwen2/mistral model layer by layer, computing only chosen tokens at chosen positions.

The runner reuses the model's own modules (norms, projections, MLP, rotary embedding) but owns the
loop, so the blender can decide per layer which tokens carry hidden states. All attention reads the
request's `KVCache`; fresh K/V go in through `KVCache.write` before attention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from chunkcache.config.settings import KERNELS, triton_choice
from chunkcache.kernels.attention_dispatch import MARGIN, AttentionDispatch, AttentionShape, candidates, measure_bf16
from chunkcache.kernels.sparse_attention import (CPU_HEAD_DIMS, AttentionPlan, plan_sparse_attention,
                                                 sparse_query_attention)
from chunkcache.kernels.sparse_attention_bf16 import sparse_query_attention_bf16_cpu
from chunkcache.runner.fingerprint import derived_fingerprint, model_fingerprint, weights_digest
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.linear import apply_linear_dtype

log = logging.getLogger(__name__)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class ModelRunner:
    """Layer-wise forward over a transformers causal LM (batch size 1, one request at a time)."""

    def __init__(self, model: torch.nn.Module, tokenizer: object | None = None, kernels: str = "auto",
                 linear_dtype: str | None = None, decode_linear_dtype: str | None = None,
                 attention_dtype: str | None = None) -> None:
        """kernels: auto | torch | cpp | triton. Under auto the attention implementation is measured here (or read
        from the machine's cache) and the other kernels take Triton on CUDA; otherwise the one named runs
        (cpp: the C++ attention, torch references elsewhere). linear_dtype: "bfloat16" swaps an fp32 model's
        decoder linear layers for bf16 ones where measured faster (runner/linear.py), before the fingerprint;
        decode_linear_dtype "float32" keeps them fp32 for the decode steps (`decode_layers`). attention_dtype
        "bfloat16": the prefill's C++ attention calls take bf16 products (kernels/sparse_attention_bf16.py) where
        measured faster than the fp32 C++ build here; decode steps and decode-time correction keep fp32."""
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        cfg = model.config
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) == "dynamic":
            raise ValueError("dynamic NTK rope changes frequencies with length; cached keys cannot be re-positioned")
        if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
            raise ValueError("sliding-window attention is not supported by the blender")
        self.model = model
        self.tokenizer = tokenizer
        inner = model.model
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = float(inner.layers[0].self_attn.scaling)
        self.max_positions = cfg.max_position_embeddings
        self.inv_freq = inner.rotary_emb.inv_freq.detach().to(torch.float32)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        loaded = model_fingerprint(model, tokenizer)
        self.linear, self.layers = apply_linear_dtype(model, linear_dtype, decode_linear_dtype)
        self.decode_layers = inner.layers  # the decode steps' (the prefill's `layers` unless the precision splits)
        # KV is keyed by what computes it (bf16 linears compute other KV); what was measured about the model
        # (qcfuse's critical layers) by the model as loaded, which the linear layers' precision does not change
        self.fingerprint = loaded
        if self.linear.split:  # the model is as loaded; the prefill's layers are not
            self.fingerprint = derived_fingerprint(loaded, prefill_layers=weights_digest(self.layers),
                                                   decode_linear_dtype=self.linear.decode_dtype)
        elif self.linear.swapped:
            self.fingerprint = model_fingerprint(model, tokenizer)
        self.profile_fingerprint = loaded
        self.kernels = kernels
        self.use_triton = triton_choice(kernels)  # the other ops
        self.attention_shape = shape = AttentionShape(self.n_heads, self.n_kv_heads, self.head_dim,
                                                      str(self.dtype).removeprefix("torch."), str(self.device),
                                                      torch.get_num_threads(), self.max_positions)
        if kernels == "cpp" and "cpp" not in candidates(shape):
            raise ValueError(f"kernels='cpp' takes fp32 CPU models with head_dim in {CPU_HEAD_DIMS} once the C++ "
                             f"kernel builds; this model is {shape.dtype} on {shape.device}, head_dim {self.head_dim}")
        self.attention = AttentionDispatch.build(kernels, shape)  # builds/measures now, not in the first request
        self.attention_bf16, self.attention_precision = self._bf16_attention(attention_dtype, shape)
        if self.attention_bf16:  # it computes other KV: keyed apart
            self.fingerprint = derived_fingerprint(self.fingerprint, prefill_attention="bfloat16")

    def _bf16_attention(self, attention_dtype: str | None, shape: AttentionShape) -> tuple[bool, str]:
        """Whether the prefill's C++ attention takes bf16 products, and one line saying why."""
        if attention_dtype in (None, "float32", str(self.dtype).removeprefix("torch.")):
            return False, "attention products in the model's dtype"
        if attention_dtype != "bfloat16":
            raise ValueError(f"attention_dtype must be float32 or bfloat16, got {attention_dtype!r}")
        if self.kernels not in ("auto", "cpp"):
            return False, f"attention products fp32: kernels={self.kernels} runs no C++ attention"
        speedup = measure_bf16(shape, self.attention.cpp_march)
        if speedup is None:
            line = "attention products fp32: no bf16 C++ kernel here (needs an fp32 CPU model and AVX512-BF16)"
        elif speedup < MARGIN:
            line = f"attention products fp32: bf16 measured {speedup:.2f}x the fp32 C++ kernel here"
        else:
            line = f"attention products bf16 in the prefill: {speedup:.2f}x the fp32 C++ kernel here"
        log.info(line)
        return speedup is not None and speedup >= MARGIN, line

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.n_layers, self.n_kv_heads, self.head_dim, capacity, self.inv_freq.to(self.device),
                       self.dtype, self.device, use_triton=self.use_triton)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [m] -> hidden [m, hidden_size]."""
        return self.model.model.embed_tokens(ids.to(self.device))

    def stack(self, decode: bool = False) -> torch.nn.ModuleList:
        """The decoder layers a forward runs: the decode steps' (decode_layers) or the prefill's (layers)."""
        return self.decode_layers if decode else self.layers

    def qkv(self, layer_idx: int, hidden: torch.Tensor, positions: torch.Tensor, decode: bool = False):
        """hidden [m, H] at positions [m] -> q [n_heads, m, d], k [n_kv, m, d], v [n_kv, m, d] (RoPE applied)."""
        layer = self.stack(decode)[layer_idx]
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        m = x.shape[0]
        q = attn.q_proj(x).view(m, self.n_heads, self.head_dim)  # [m, n_heads, d]
        k = attn.k_proj(x).view(m, self.n_kv_heads, self.head_dim)  # [m, n_kv, d]
        v = attn.v_proj(x).view(m, self.n_kv_heads, self.head_dim).transpose(0, 1)  # [n_kv, m, d]
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = self.model.model.rotary_emb(x[None], positions[None].to(self.device))  # [1, m, d] each
        cos, sin = cos[0].to(x.dtype), sin[0].to(x.dtype)
        q = q.transpose(0, 1)  # [n_heads, m, d]
        k = k.transpose(0, 1)  # [n_kv, m, d]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def attend_mlp(self, layer_idx: int, hidden: torch.Tensor, q: torch.Tensor, cache: KVCache,
                   plan: AttentionPlan, decode: bool = False) -> torch.Tensor:
        """Attention of q over the cache, then o_proj, residual, MLP. hidden [m, H] -> [m, H]."""
        layer = self.stack(decode)[layer_idx]
        k, v = cache.layer(layer_idx)
        impl, march = self.attention.choose(plan), self.attention.cpp_march
        if impl == "cpp" and self.attention_bf16 and not decode and plan.temper is None:
            o = sparse_query_attention_bf16_cpu(q, k, v, plan, self.scale)  # [n_heads, m, d]
        else:
            o = sparse_query_attention(q, k, v, plan, self.scale, impl=impl, march=march)  # [n_heads, m, d]
        o = o.transpose(0, 1).reshape(hidden.shape[0], self.n_heads * self.head_dim)  # [m, n_heads*d]
        hidden = hidden + layer.self_attn.o_proj(o)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def forward_layer(self, layer_idx: int, hidden: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                      plan: AttentionPlan, decode: bool = False) -> torch.Tensor:
        """One decoder layer for tokens at `positions`; their fresh K/V are written into the cache first."""
        q, k, v = self.qkv(layer_idx, hidden, positions, decode)
        cache.write(layer_idx, positions, k, v, end=plan.q_end)
        return self.attend_mlp(layer_idx, hidden, q, cache, plan, decode)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [m, H] (last layer) -> logits [m, vocab] in fp32."""
        return self.model.lm_head(self.model.model.norm(hidden)).float()

    @torch.inference_mode()
    def extend(self, ids: torch.Tensor, cache: KVCache,
               before_layer: Callable[[int], None] | None = None, decode: bool = False) -> torch.Tensor:
        """Compute new tokens ids [m] at positions cache.length.. through every layer. Returns last hidden [m, H].

        before_layer(l): called before layer l runs (the blender loads layer l of chunk KV there). decode: run the
        decode steps' layers (tokens a decode would have fed: teacher forcing, a generated answer's KV).
        """
        start, m = cache.length, ids.numel()
        if start + m > self.max_positions:
            raise ValueError(f"prompt of {start + m} tokens exceeds the model context of {self.max_positions}")
        return self.forward_rows(ids, torch.arange(start, start + m, device=self.device), cache, before_layer, decode)

    @torch.inference_mode()
    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                     before_layer: Callable[[int], None] | None = None, decode: bool = False) -> torch.Tensor:
        """Compute tokens ids [m] at strictly increasing positions [m] (anywhere in the cache: new tokens at
        cache.length.., or prompt tokens to recompute, then the next token) through every layer, each row attending
        to the cached keys up to its position. Their K/V overwrite the cache. Returns last hidden [m, H].
        decode: through the decode steps' layers (a decode-time correction)."""
        end = int(positions[-1]) + 1 if positions.numel() else 0  # empty: plan_sparse_attention says so
        if end > self.max_positions:
            raise ValueError(f"position {end - 1} exceeds the model context of {self.max_positions}")
        cache.reserve(end)
        plan = plan_sparse_attention(positions, end, dtype=self.dtype)
        hidden = self.embed(ids)
        for layer_idx in range(self.n_layers):
            if before_layer is not None:
                before_layer(layer_idx)
            hidden = self.forward_layer(layer_idx, hidden, positions, cache, plan, decode)
        return hidden

    @torch.inference_mode()
    def decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decode token: token [1] int64 at position cache.length -> next-token logits [vocab] fp32.

        No planning, no validation, no host sync: the position is the host-side cache.length, the K/V go
        in by a contiguous `KVCache.write`, and the single query attends over every cached key (no mask).
        The caller keeps the position under max_positions; reserve capacity ahead (prefill's `reserve`).
        """
        pos = cache.length
        cache.reserve(pos + 1)
        positions = torch.arange(pos, pos + 1, device=self.device)  # [1]
        hidden = self.embed(token)  # [1, H]
        cos, sin = self.model.model.rotary_emb(hidden[None], positions[None])  # [1, 1, d] each
        cos, sin = cos[0].to(hidden.dtype), sin[0].to(hidden.dtype)  # [1, d]
        g = self.n_heads // self.n_kv_heads
        for layer_idx in range(self.n_layers):
            layer = self.decode_layers[layer_idx]
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(1, self.n_heads, self.head_dim)  # [1, n_heads, d]
            k = attn.k_proj(x).view(1, self.n_kv_heads, self.head_dim)  # [1, n_kv, d]
            v = attn.v_proj(x).view(1, self.n_kv_heads, self.head_dim).transpose(0, 1)  # [n_kv, 1, d]
            if getattr(attn, "q_norm", None) is not None:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(0, 1), k.transpose(0, 1)  # [n_heads, 1, d], [n_kv, 1, d]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.write(layer_idx, slice(pos, pos + 1), k, v)
            keys, values = cache.layer(layer_idx)  # [n_kv, pos + 1, d]
            o = F.scaled_dot_product_attention(q[None], keys[None], values[None], scale=self.scale,
                                               enable_gqa=g > 1)[0]  # [n_heads, 1, d]
            hidden = hidden + attn.o_proj(o.transpose(0, 1).reshape(1, self.n_heads * self.head_dim))  # [1, H]
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.logits(hidden)[0]
