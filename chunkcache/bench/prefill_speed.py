"""Full-prefill and chunk-precompute tokens/s per attention implementation, on a random model of a real shape.

Speed does not depend on the weights, so a randomly initialised llama of the model's shape stands in for it.
Three calls per implementation (kernels=torch|cpp|auto; Triton on CUDA), each the median of three runs:
- full prefill: `tokens` tokens from position 0 (a causal square: every implementation takes SDPA there);
- precompute: one 512-token chunk behind a 64-token prefix (what `ChunkSource` does for every chunk);
- blend pass: 15% of `tokens` scattered positions plus a 32-token suffix over a full cache (the recompute).
"""

from __future__ import annotations

import statistics

import torch

from chunkcache.kernels.attention_dispatch import candidates, timer
from chunkcache.kernels.sparse_attention import plan_sparse_attention
from chunkcache.runner.runner import ModelRunner

PREFIX, CHUNK, SUFFIX = 64, 512, 32


def random_model(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str) -> torch.nn.Module:
    """A llama of shape (layers, query heads, KV heads, head_dim) with random weights (seed 0), for timings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    n_layers, n_heads, n_kv, d = shape
    hidden = n_heads * d
    cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                      head_dim=d, max_position_embeddings=8192, rope_theta=1e5)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device, dtype).eval()


def _median_s(fn, cuda: bool) -> float:
    run = timer(fn, cuda)
    return statistics.median(run() for _ in range(3)) / 1e3


@torch.inference_mode()
def prefill_speed(name: str, shape: tuple[int, int, int, int], dtype: torch.dtype, device: str, tokens: int) -> dict:
    """{kernels: {full_prefill_tok_s, precompute_tok_s, blend_pass_ms, attention}} for a model of `shape`."""
    model = random_model(shape, dtype, device)
    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49152, (tokens,), generator=gen).to(device)
    auto = ModelRunner(model, kernels="auto")
    names = ["auto"] + [c for c in candidates(auto.attention_shape) if c != "torch"] + ["torch"]
    out = {"model": name, "tokens": tokens, "chunk": CHUNK, "prefix": PREFIX}
    m = int(0.15 * (tokens - SUFFIX))
    picked = torch.sort(torch.randperm(tokens - SUFFIX, generator=gen)[:m]).values
    positions = torch.cat((picked, torch.arange(tokens - SUFFIX, tokens))).to(device)  # [m + SUFFIX]
    for kernels in names:
        runner = auto if kernels == "auto" else ModelRunner(model, kernels=kernels)

        def full():
            runner.extend(ids, runner.new_cache(tokens))

        def precompute():
            cache = runner.new_cache(PREFIX + CHUNK)
            runner.extend(ids[:PREFIX], cache)
            runner.extend(ids[PREFIX:PREFIX + CHUNK], cache)

        cache = runner.new_cache(tokens)
        runner.extend(ids, cache)  # a full cache for the blend pass to attend over
        plan = plan_sparse_attention(positions, tokens, dtype=dtype)
        hidden = runner.embed(ids[positions])

        def blend_pass():
            h = hidden
            for layer in range(runner.n_layers):
                h = runner.forward_layer(layer, h, positions, cache, plan)

        full()
        out[kernels] = {"full_prefill_tok_s": tokens / _median_s(full, cuda),
                        "precompute_tok_s": CHUNK / _median_s(precompute, cuda),
                        "blend_pass_ms": 1e3 * _median_s(blend_pass, cuda),
                        "attention": {"full": runner.attention.choose_for(tokens, tokens, True),
                                      "precompute": runner.attention.choose_for(CHUNK, PREFIX + CHUNK),
                                      "blend": runner.attention.choose(plan)}}
        print(f"{name:>13} kernels={kernels:<6} full prefill {out[kernels]['full_prefill_tok_s']:7.0f} tok/s  "
              f"precompute {out[kernels]['precompute_tok_s']:7.0f} tok/s  blend pass "
              f"{out[kernels]['blend_pass_ms']:8.1f} ms  (attention {out[kernels]['attention']})")
    return out
