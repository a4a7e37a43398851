"""Where a blended prefill's time goes: full prefill against fusionqc at a few ratios on HotpotQA examples, each
TTFT the median of `repeats` prefills, with the blender's own step timings (place, load, compute) and a cProfile
of one prefill per ratio of the last example (the chunkcache functions by cumulative time, and torch's ops by own time).

python benchmarks/profile_prefill.py [--suite musique] --split test --limit 5 --ratios 0.05,0.15 \
    [--linear-dtype bfloat16 [--decode-linear-dtype float32]] [--attention-dtype bfloat16] \
    --json benchmarks/profile_prefill.json
"""

import argparse
import cProfile
import json
import pstats
import statistics
from dataclasses import replace

import torch

from chunkcache.bench.rag import fused_request, timed_prefill
from chunkcache.bench.tasks.runner import task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.kernels._cpp import cpuinfo
from chunkcache.retrieval.embedder import Embedder


def profile(engine, req, cfg, top):
    prof = cProfile.Profile()
    prof.enable()
    engine.prefill(req, cfg, 32)
    prof.disable()
    st = pstats.Stats(prof)
    rows = [{"where": f"{file.split('/chunkcache/')[-1]}:{line}:{fn}", "calls": calls, "own_s": own,
             "cum_s": cum, "ours": "/chunkcache/" in file and "site-packages" not in file}
            for (file, line, fn), (_, calls, own, cum, _) in st.stats.items()]
    ours = sorted((r for r in rows if r["ours"]), key=lambda r: -r["cum_s"])[:top]
    own = sorted(rows, key=lambda r: -r["own_s"])[:top]
    return {"by_cumulative": ours, "by_own_time": own}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="hotpotqa")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--ratios", default="0.05,0.15")
    ap.add_argument("--mode", default="fusionqc")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--linear-dtype", default=None, help="EngineConfig.linear_dtype (bfloat16: bf16 linear layers)")
    ap.add_argument("--attention-dtype", default=None, help="EngineConfig.attention_dtype (bfloat16: bf16 products)")
    ap.add_argument("--decode-linear-dtype", default=None,
                    help="EngineConfig.decode_linear_dtype (float32 with bf16 linears: bf16 prefill, fp32 decode)")
    ap.add_argument("--json")
    args = ap.parse_args()
    engine = ChunkCacheEngine.from_config(EngineConfig(threads=2, store="memory", linear_dtype=args.linear_dtype,
                                                       decode_linear_dtype=args.decode_linear_dtype,
                                                       attention_dtype=args.attention_dtype))
    embedder = Embedder()
    ratios = [float(r) for r in args.ratios.split(",")]
    rows = []
    examples = load_suite(get_suite(args.suite), args.split, args.limit)
    for ex in examples:
        req = task_request(engine.prompts, ex)
        engine.precompute(list(ex.chunks))
        fused, _ = fused_request(engine, req, embedder.encode(list(ex.chunks)))
        _, full_t = timed_prefill(engine, req, BlendConfig(mode="full"), 32, args.repeats)
        row = {"id": ex.id, "prompt_tokens": req.num_tokens, "full_s": full_t, "modes": {}}
        for r in ratios:
            cfg = replace(BlendConfig(mode=args.mode), recompute_ratio=r)
            res, t = timed_prefill(engine, fused, cfg, 32, args.repeats)
            row["modes"][str(r)] = {"ttft_s": t, "speedup": full_t / t, "timings": res.stats.timings,
                                    "recomputed_tokens": res.stats.recomputed_tokens}
        rows.append(row)
        steps = lambda m: json.dumps({k: round(v, 3) for k, v in m["timings"].items()})  # noqa: E731
        print(ex.id, req.num_tokens, f"full {full_t:.3f}s", "  ".join(
            f"{r}: {m['ttft_s']:.3f}s {m['speedup']:.2f}x {steps(m)}" for r, m in row["modes"].items()), flush=True)
    last = examples[-1]  # its entries are the store's most recent: none evicted, so none recomputed in the profile
    req = task_request(engine.prompts, last)
    fused, _ = fused_request(engine, req, embedder.encode(list(last.chunks)))
    profiles = {str(r): profile(engine, fused, replace(BlendConfig(mode=args.mode), recompute_ratio=r), args.top)
                for r in ratios}
    profiles["full"] = profile(engine, req, BlendConfig(mode="full"), args.top)
    summary = {str(r): statistics.median(row["modes"][str(r)]["speedup"] for row in rows) for r in ratios}
    print("median paired speedup:", summary)
    for k, p in profiles.items():
        print(f"--- {k}: by cumulative")
        for e in p["by_cumulative"][:15]:
            print(f"  {e['cum_s']:.3f}s cum {e['own_s']:.3f}s own {e['calls']:5d}x  {e['where']}")
        print(f"--- {k}: by own time")
        for e in p["by_own_time"][:12]:
            print(f"  {e['own_s']:.3f}s own {e['calls']:5d}x  {e['where']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpuinfo("model name"),
                       "torch": torch.__version__, "linear": engine.runner.linear.describe(),
                       "attention_precision": engine.runner.attention_precision, "mode": args.mode,
                       "suite": args.suite, "split": args.split,
                       "median_speedup": summary, "rows": rows, "profiles": profiles}, f, indent=1)


if __name__ == "__main__":
    main()
