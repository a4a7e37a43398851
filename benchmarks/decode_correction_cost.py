"""What one decode step costs with decode-time correction, against the plain step (`ModelRunner.decode_step`).

On the default model, over a prompt of --context tokens computed once, each repeat times a plain decode step and a
corrected step that also recomputes K prompt tokens (`runner/decode.next_logits`), back to back on copies of the
same cache; the figure per K is the median of the paired ratios (corrected / plain). Prints a table, writes JSON.
--random-weights builds the default model's shape (SmolLM2-135M: 30 layers, 576 hidden, 9 / 3 heads) with random
weights instead of loading it: a step's time does not depend on the weights, and a machine without the model (the
lent GPU, which cannot fetch it) can measure it.

python benchmarks/decode_correction_cost.py [--context 1450] [--ks 1,8,16,32,64,128,256] [--repeats 15] [--json OUT]
    [--device cuda] [--dtype bfloat16] [--random-weights]
"""
import argparse
import json
import statistics as st
import time
from pathlib import Path

import torch

from chunkcache.bench.kernels_bench import MODELS
from chunkcache.bench.prefill_speed import random_model
from chunkcache.bench.teacher_forcing import copy_cache
from chunkcache.config import EngineConfig
from chunkcache.runner.decode import DecodeCorrection, next_logits
from chunkcache.runner.loader import load_model
from chunkcache.runner.runner import ModelRunner


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_s(runner: ModelRunner, base, prompt: torch.Tensor, k: int) -> float:
    cache = copy_cache(runner, base)
    cache.reserve(cache.length + 1)
    corr = DecodeCorrection(prompt, prompt.numel() - k, k) if k else None  # the prompt's last k positions
    tok = torch.tensor([42], device=runner.device)
    sync(runner.device)
    t0 = time.perf_counter()
    next_logits(runner, tok, cache, corr)
    sync(runner.device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=1450)
    ap.add_argument("--ks", default="1,8,16,32,64,128,256")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: the engine's for the device (fp32 on cpu, bf16 on cuda)")
    ap.add_argument("--random-weights", action="store_true", help="the default model's shape, random weights")
    args = ap.parse_args()
    cfg = EngineConfig(device=args.device, dtype=args.dtype)
    dtype = getattr(torch, cfg.resolved_dtype)
    if args.random_weights:
        runner = ModelRunner(random_model(MODELS["smollm2-135m"], dtype, args.device))
    else:
        lm = load_model(None, dtype, args.device)
        runner = ModelRunner(lm.model, lm.tokenizer)
    prompt = torch.randint(100, 40000, (args.context,), generator=torch.Generator().manual_seed(0)).to(runner.device)
    base = runner.new_cache(args.context + 1)
    runner.extend(prompt, base)
    ks = [int(k) for k in args.ks.split(",")]
    for k in ks:  # warm-up
        step_s(runner, base, prompt, k)
    plain, rows = [], {}
    for k in ks:
        ratios, times = [], []
        for _ in range(args.repeats):
            p, c = step_s(runner, base, prompt, 0), step_s(runner, base, prompt, k)
            plain.append(p)
            times.append(c)
            ratios.append(c / p)
        rows[k] = {"step_ratio_median": st.median(ratios), "step_ms_median": 1e3 * st.median(times)}
        print(f"K={k:4d}: {rows[k]['step_ratio_median']:.2f}x a plain step ({rows[k]['step_ms_median']:.1f} ms)",
              flush=True)
    out = {"context": args.context, "repeats": args.repeats, "plain_step_ms_median": 1e3 * st.median(plain),
           "threads": torch.get_num_threads(), "attention": runner.attention.summary(), "per_k": rows,
           "device": str(runner.device), "device_name": torch.cuda.get_device_name(runner.device)
           if runner.device.type == "cuda" else None, "dtype": cfg.resolved_dtype,
           "random_weights": args.random_weights}
    print(f"plain step: {out['plain_step_ms_median']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
