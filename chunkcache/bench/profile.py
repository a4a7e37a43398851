"""`chunkcache bench rag --profile`: where one request's prefill time goes, per op group, per mode.

The profile runs `torch.profiler` over `engine.prefill` on the first example (chunk KV warm in the
store) and sums each op's *self* CPU time into a few groups a reader can act on. It is printed as a
table and stored in the bench JSON under `profile`.
"""

from __future__ import annotations

import time

from torch.profiler import ProfilerActivity, profile

from chunkcache.bench.musique import passage_text
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine

# op-name fragments -> group; first match wins (aten names as the profiler reports them)
GROUPS = (
    ("attention", ("scaled_dot_product", "flash_attention", "_softmax", "softmax", "baddbmm", "bmm",
                   "sparse_attention_cpu")),
    ("linear projections and MLP", ("linear", "addmm", "aten::mm", "matmul", "silu", "aten::mul")),
    ("chunk placement (RoPE shift, KV copies)", ("copy_", "index_copy", "aten::cat", "aten::neg", "to_copy",
                                                 "aten::cos", "aten::sin", "aten::add")),
    ("norms", ("rsqrt", "pow", "mean", "aten::rms_norm")),
    ("selection (deviation, top-k)", ("topk", "sort", "sum", "aten::sub", "norm")),
)


def group_of(op: str) -> str:
    for name, fragments in GROUPS:
        if any(f in op for f in fragments):
            return name
    return "other"


def profile_prefill(engine: ChunkCacheEngine, ex: dict, cfg: BlendConfig, top: int = 12) -> dict:
    """Profile one prefill of `ex` under `cfg`: {wall_s, groups: {group: seconds}, ops: [(op, seconds)]}."""
    chunks = [passage_text(c) for c in ex["ctxs"]]
    req = engine.prompts.request(chunks, ex["question"])
    engine.precompute(chunks)
    engine.prefill(req, cfg)  # warm-up: allocator, lazy imports
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        engine.prefill(req, cfg)
        wall = time.perf_counter() - t0
    ops: dict[str, float] = {}
    for evt in prof.key_averages():
        ops[evt.key] = ops.get(evt.key, 0.0) + evt.self_cpu_time_total / 1e6
    groups: dict[str, float] = {}
    for op, sec in ops.items():
        groups[group_of(op)] = groups.get(group_of(op), 0.0) + sec
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"mode": cfg.mode, "recompute_ratio": cfg.recompute_ratio, "prompt_tokens": req.num_tokens,
            "wall_s": wall, "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])), "top_ops": ranked}


def format_profile(p: dict) -> str:
    total = sum(p["groups"].values()) or 1.0
    lines = [f"profile: {p['mode']} @ {p['recompute_ratio']}, {p['prompt_tokens']} tokens, wall {p['wall_s']:.2f}s",
             "| where | self CPU time | share |", "| --- | --- | --- |"]
    lines += [f"| {g} | {s:.2f} s | {100 * s / total:.0f}% |" for g, s in p["groups"].items()]
    lines += ["top ops: " + ", ".join(f"{op} {s:.2f}s" for op, s in p["top_ops"])]
    return "\n".join(lines)
