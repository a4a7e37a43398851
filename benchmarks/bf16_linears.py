"""Decoder linear layers in bfloat16, everything else fp32: what it buys in TTFT, what it costs in answers.

On a CPU with AVX512-BF16 a bf16 GEMM runs about twice as fast as an fp32 one, and the projections and MLP are
over half of a blended prefill's time. `linear_dtype="bfloat16"` (chunkcache/runner/linear.py) computes every
`nn.Linear` inside the decoder layers in bf16 (weights stored in bf16, inputs cast to bf16, fp32 accumulation,
the output cast back to fp32); the embeddings, norms, residual stream, rotary embedding, attention, KV cache and
lm_head stay fp32. Two engines on the same examples in one run: the fp32 one and the bf16-linear one (its own
store, so its chunk KV is precomputed with bf16 linears too). Every TTFT ratio is paired per
example against the fp32 engine's full prefill; agreement is each answer's token F1 against the fp32 full
prefill's answer, as `bench tasks` scores it. `--engines fp32,bf16lin,bf16pre` adds the engine whose prefill
alone runs bf16 linears (`decode_linear_dtype="float32"`: the decode steps and the decode-time correction in fp32);
`bf16attn` is that engine with bf16 products in the prefill's C++ attention too (`attention_dtype="bfloat16"`).
The whole answer is timed too: TTFT (median of the repeats) plus the one free-run decode of the answer, paired per
example against the fp32 engine's full prefill (`answer_speedup_vs_fp32_full_median`, the timed rows only).

python benchmarks/bf16_linears.py --split test [--skip 20] --limit 20 --ratio 0.05 --decode-correction 1024 --timed 10 \
    --json benchmarks/bf16_linears_hotpotqa_test20_r05_dc1024.json
"""

import argparse
import json
import statistics
import time

import torch

from chunkcache.bench.rag import evaluate_request, fused_request
from chunkcache.bench.tasks.metrics import agreement
from chunkcache.bench.tasks.runner import score_rows, task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.kernels._cpp import cpu_flags, cpuinfo
from chunkcache.retrieval.embedder import Embedder


def paired(rows, num, den, whole=False):
    """Median over examples of den's time / num's (each 'engine:label'), the timed rows only: TTFT, or with
    whole=True the whole answer (TTFT plus the answer's decode)."""
    time_of = (lambda m: m["ttft_s"] + m["decode_s"]) if whole else (lambda m: m["ttft_s"])  # noqa: E731
    vals = [time_of(r[den]) / time_of(r[num]) for r in rows if r["timed"]]
    return statistics.median(vals) if vals else None


def summarize(rows, names, mode):
    """Per engine:label means and paired medians over the rows so far."""
    labels = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    summary = {label: {"agreement_f1": statistics.mean(r[label]["agreement_f1"] for r in rows),
                       "agreement_exact": statistics.mean(r[label]["agreement_exact"] for r in rows),
                       "task_score": statistics.mean(r[label]["task_score"] for r in rows),
                       "tf_kl_vs_own_engines_full_mean": statistics.mean(r[label]["tf_kl"] for r in rows),
                       "ttft_speedup_vs_fp32_full_median": paired(rows, label, "fp32:full"),
                       "answer_speedup_vs_fp32_full_median": paired(rows, label, "fp32:full", whole=True)}
               for label in labels}
    for name in names[1:]:
        summary[f"{name}_vs_fp32_same_mode"] = {m: paired(rows, f"{name}:{m}", f"fp32:{m}") for m in ("full", mode)}
        summary[f"{name}_vs_fp32_same_mode_whole_answer"] = {m: paired(rows, f"{name}:{m}", f"fp32:{m}", whole=True)
                                                             for m in ("full", mode)}
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="hotpotqa")
    ap.add_argument("--split", default="test")
    ap.add_argument("--skip", type=int, default=0, help="start at this example of the split")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--mode", default="fusionqc")
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--decode-correction", type=int, default=1024)
    ap.add_argument("--timed", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--engines", default="fp32,bf16lin",
                    help="fp32 (always run: the reference), bf16lin (bf16 linears), "
                         "bf16pre (bf16 prefill, fp32 decode), bf16attn (bf16pre + bf16 attention products)")
    ap.add_argument("--json")
    args = ap.parse_args()
    suite = get_suite(args.suite)
    base = EngineConfig(threads=2, store="memory")
    settings = {"fp32": {}, "bf16lin": {"linear_dtype": "bfloat16"},
                "bf16pre": {"linear_dtype": "bfloat16", "decode_linear_dtype": "float32"},
                "bf16attn": {"linear_dtype": "bfloat16", "decode_linear_dtype": "float32",
                             "attention_dtype": "bfloat16"}}
    names = ["fp32", *(n for n in args.engines.split(",") if n != "fp32")]
    engines = {n: ChunkCacheEngine.from_config(base.model_copy(update=settings[n])) for n in names}
    linear = {n: e.runner.linear.describe() for n, e in engines.items()}
    attention = {n: e.runner.attention_precision for n, e in engines.items()}
    print(linear, attention, flush=True)
    cfg = BlendConfig(mode=args.mode, recompute_ratio=args.ratio, decode_correction=args.decode_correction)
    embedder = Embedder()
    rows, summary = [], {}
    for i, ex in enumerate(load_suite(suite, args.split, args.skip + args.limit)[args.skip:]):
        timed, row = i < args.timed, {"id": ex.id}
        for name, engine in engines.items():
            req = task_request(engine.prompts, ex)
            fused, _ = fused_request(engine, req, embedder.encode(list(ex.chunks)))
            modes = evaluate_request(engine, list(ex.chunks), req, {args.mode: cfg}, args.max_new_tokens,
                                     repeats=args.repeats if timed else 1, fused=fused)
            for label, m in score_rows(modes, ex, suite.score).items():
                row[f"{name}:{label}"] = {k: m[k] for k in ("ttft_s", "decode_s", "new_tokens", "answer",
                                                                    "task_score", "tf_kl")}
        ref = row["fp32:full"]["answer"]
        for key, m in row.items():
            if isinstance(m, dict):
                m.update(agreement(m["answer"], ref))
        row["timed"] = timed
        rows.append(row)
        print(f"[{i + 1}] {ex.id} " + "  ".join(f"{k}: {m['ttft_s']:.3f}s agree={m['agreement_f1']:.2f}"
                                                 for k, m in row.items() if isinstance(m, dict)), flush=True)
        summary = summarize(rows, names, args.mode)
        if args.json:  # after every example: a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"machine": cpuinfo("model name"), "avx512_bf16": "avx512_bf16" in cpu_flags().split(),
                           "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "date": time.strftime("%F"), "suite": args.suite, "split": args.split, "mode": args.mode,
                           "ratio": args.ratio, "decode_correction": args.decode_correction, "skip": args.skip,
                           "linear": linear, "attention": attention, "summary": summary, "rows": rows}, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
