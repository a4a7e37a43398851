"""`chunkcache bench kernels`: each Triton kernel vs its torch reference (and SDPA for attention).

On the CPU the sparse-query attention row also times the C++ kernel of each ISA build in `--isa` (`cpp`:
{march: ms, ratio to torch and to the bound}) and the compute-share bound `causal_share_ms`: SDPA's fused
causal kernel over every position, times the share of the causal triangle's work the selected queries need
(what the scattered queries would cost at full prefill's rate), and the C++ kernel's bf16 variant where this CPU
has AVX512-BF16 (`cpp_bf16`: its time with the K/V packing, speed-ups, and its error against fp32 attention relative
to the reference's on the same bf16-rounded operands). The report names the CPU, its ISA flags and
what kernels=auto measured and chose for the model (`dispatch`). `--prefill` adds, per implementation,
full-prefill and chunk-precompute tokens/s of a randomly initialised model of the shape (bench/prefill_speed.py).

Shapes are one layer (attention, deviation, scatter) or one chunk's all layers (RoPE shift) of a
real model config at a prompt of `--tokens` tokens and `--ratio` recomputed. Reports time, the
speedup over the torch path, achieved GB/s or TFLOP/s and their fraction of the device's nominal
peak (and of a measured device-to-device copy). Without CUDA only the torch references are timed
(small shapes), with a note that the GPU figures are open. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from chunkcache.bench.prefill_speed import prefill_speed
from chunkcache.config.arg_types import positive
from chunkcache.kernels import _cpp
from chunkcache.kernels._triton import triton_available
from chunkcache.kernels.attention_dispatch import AttentionDispatch, AttentionShape
from chunkcache.kernels.deviation import select_topk_deviation_ref, select_topk_deviation_triton
from chunkcache.kernels.rope_shift import rope_shift_ref, rope_shift_triton
from chunkcache.kernels.scatter_kv import scatter_kv_ref, scatter_kv_triton
from chunkcache.kernels.sparse_attention import (cpu_kernel_applies, plan_sparse_attention,
                                                 sparse_query_attention_cpu, sparse_query_attention_ref,
                                                 sparse_query_attention_triton)
from chunkcache.kernels.sparse_attention_bf16 import (bf16_kernel_available, sparse_query_attention_bf16_cpu,
                                                      sparse_query_attention_bf16_ref)

MODELS = {  # layers, query heads, KV heads, head_dim
    "smollm2-135m": (30, 9, 3, 64),
    "llama3-8b": (32, 32, 8, 128),
}
PEAKS = {  # substring of the device name: (GB/s, dense bf16 TFLOP/s), vendor figures
    "H200": (4800.0, 989.0),
    "H100 PCIe": (2000.0, 756.0),
    "H100": (3350.0, 989.0),
    "A100-SXM4-80GB": (2039.0, 312.0),
    "A100": (1555.0, 312.0),
    "L40S": (864.0, 362.0),
    "L4": (300.0, 121.0),
}


def _time_ms(fn: Callable[[], object], cuda: bool, reps: int) -> float:
    """Median milliseconds of fn(): CUDA events over >= 50 runs after warm-up on CUDA, wall clock on CPU."""
    fn()
    if not cuda:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    for _ in range(10):
        fn()
    times = []
    for _ in range(max(reps, 50)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _device_info(cuda: bool) -> dict:
    if not cuda:
        return {"name": "cpu", "peak_gbps": None, "peak_tflops": None, "copy_gbps": None}
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAKS.items() if k in name), (None, None))
    buf = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB
    dst = torch.empty_like(buf)
    copy_ms = _time_ms(lambda: dst.copy_(buf), True, 0)
    return {"name": name, "peak_gbps": peak[0], "peak_tflops": peak[1],
            "copy_gbps": 2 * buf.numel() / copy_ms / 1e6}


def _row(kernel: str, model: str, shape: dict, dev: dict, triton_ms: float | None, torch_ms: float,
         nbytes: float | None = None, flops: float | None = None, **extra) -> dict:
    row = {"kernel": kernel, "model": model, "shape": shape, "triton_ms": triton_ms, "torch_ms": torch_ms,
           "speedup_vs_torch": torch_ms / triton_ms if triton_ms else None, **extra}
    ms = triton_ms if triton_ms else torch_ms
    if nbytes is not None:
        row["gbps"] = nbytes / ms / 1e6
        row["frac_peak_bw"] = row["gbps"] / dev["peak_gbps"] if dev["peak_gbps"] else None
        row["frac_copy_bw"] = row["gbps"] / dev["copy_gbps"] if dev["copy_gbps"] else None
    if flops is not None:
        row["tflops"] = flops / ms / 1e9
        row["frac_peak_tflops"] = row["tflops"] / dev["peak_tflops"] if dev["peak_tflops"] else None
    return row


def bench_model(model: str, tokens: int, ratio: float, dtype: torch.dtype, device: str, dev: dict,
                run_triton: bool, reps: int, isas: list[str]) -> list[dict]:
    n_layers, n_heads, n_kv, d = MODELS[model]
    cuda = device == "cuda"
    gen = torch.Generator().manual_seed(0)
    esize = torch.tensor([], dtype=dtype).element_size()
    m = max(1, int(ratio * tokens))
    rows = []

    def timed(triton_fn, torch_fn):
        return (_time_ms(triton_fn, cuda, reps) if run_triton else None), _time_ms(torch_fn, cuda, reps)

    chunk = min(tokens, 512)  # RoPE shift: one chunk, every layer, into the merged cache
    keys = torch.randn(n_layers, n_kv, chunk, d, generator=gen).to(device, dtype)
    merged = torch.empty(n_layers, n_kv, tokens, d, dtype=dtype, device=device)
    deltas = torch.full((chunk,), tokens - chunk, dtype=torch.int64, device=device)
    inv_freq = (1.0 / 1e5 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)).to(device)
    out = merged[:, :, tokens - chunk:]
    tri, ref = timed(lambda: rope_shift_triton(keys, deltas, inv_freq, out),
                     lambda: rope_shift_ref(keys, deltas, inv_freq, out))
    rows.append(_row("rope_shift", model, {"layers": n_layers, "n_kv": n_kv, "T": chunk, "d": d}, dev, tri, ref,
                     nbytes=2 * keys.numel() * esize + chunk * 8))

    kv = [torch.randn(n_kv, tokens, d, generator=gen).to(device, dtype) for _ in range(4)]
    tri, ref = timed(lambda: select_topk_deviation_triton(*kv, m), lambda: select_topk_deviation_ref(*kv, m))
    rows.append(_row("deviation_topk_kv", model, {"n_kv": n_kv, "T": tokens, "d": d, "k": m}, dev, tri, ref,
                     nbytes=4 * kv[0].numel() * esize))

    positions = torch.sort(torch.randperm(tokens - 1, generator=gen)[:m - 1]).values
    positions = torch.cat((positions, torch.tensor([tokens - 1]))).to(device)  # [m], last token included
    plan = plan_sparse_attention(positions, tokens)
    q = torch.randn(n_heads, m, d, generator=gen).to(device, dtype)
    k, v = kv[0], kv[1]
    scale = d ** -0.5
    flops = 4.0 * d * n_heads * float((positions.double() + 1).sum())
    tri, ref = timed(lambda: sparse_query_attention_triton(q, k, v, plan, scale),
                     lambda: sparse_query_attention_ref(q, k, v, plan, scale))
    sdpa = _time_ms(lambda: F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale,
                                                           enable_gqa=n_heads != n_kv), cuda, reps)
    extra = {}
    if not cuda:
        q_all = torch.randn(n_heads, tokens, d, generator=gen).to(device, dtype)  # [n_heads, N, d]
        causal = _time_ms(lambda: F.scaled_dot_product_attention(q_all[None], k[None], v[None], is_causal=True,
                                                                 scale=scale, enable_gqa=n_heads != n_kv), False, reps)
        share = float((positions.double() + 1).sum()) / (tokens * (tokens + 1) / 2)
        bound = causal * share
        extra = {"causal_share_ms": bound, "torch_vs_causal_share": ref / bound, "cpp": {}}
        for march in isas:
            if march != "native" and march not in _cpp.runnable_isas():
                extra["cpp"][march] = {"skipped": "this CPU cannot run it"}
            elif not cpu_kernel_applies(q, k, v, march):
                extra["cpp"][march] = {"skipped": _cpp.build_error("sparse_attention_cpu", march) or "not applicable"}
            else:
                ms = _time_ms(lambda m=march: sparse_query_attention_cpu(q, k, v, plan, scale, march=m), False, reps)
                extra["cpp"][march] = {"ms": ms, "speedup_vs_torch": ref / ms, "vs_causal_share": ms / bound}
        if dtype == torch.float32 and bf16_kernel_available():
            extra["cpp_bf16"] = _bf16_row(q, k, v, plan, scale, reps, ref, flops, extra["cpp"])
    rows.append(_row("sparse_query_attention", model, {"n_heads": n_heads, "n_kv": n_kv, "m": m, "N": tokens, "d": d},
                     dev, tri, ref, flops=flops, sdpa_same_m_ms=sdpa,
                     vs_sdpa_same_m=(tri / sdpa) if tri else None, **extra))

    cache_k, cache_v = kv[2], kv[3]
    k_new = torch.randn(n_kv, m, d, generator=gen).to(device, dtype)
    v_new = torch.randn(n_kv, m, d, generator=gen).to(device, dtype)
    index = positions.clone()
    tri, ref = timed(lambda: scatter_kv_triton(cache_k, cache_v, k_new, v_new, index),
                     lambda: scatter_kv_ref(cache_k, cache_v, k_new, v_new, index))
    rows.append(_row("scatter_kv", model, {"n_kv": n_kv, "N": tokens, "m": m, "d": d}, dev, tri, ref,
                     nbytes=4 * k_new.numel() * esize + m * 8))
    return rows


def _bf16_row(q, k, v, plan, scale, reps, torch_ms, flops, cpp) -> dict:  # type: ignore[no-untyped-def]
    """The bf16 variant on the attention row's inputs: time, speed-ups, and its error against fp32 attention."""
    ms = _time_ms(lambda: sparse_query_attention_bf16_cpu(q, k, v, plan, scale), False, reps)
    fp32 = sparse_query_attention_ref(q, k, v, plan, scale)
    rel = lambda x: float((x - fp32).norm() / fp32.norm())  # noqa: E731
    fastest = min((c["ms"] for c in cpp.values() if "ms" in c), default=None)
    got = sparse_query_attention_bf16_cpu(q, k, v, plan, scale)
    operands_only = sparse_query_attention_bf16_ref(q, k, v, plan, scale)
    return {"ms": ms, "speedup_vs_torch": torch_ms / ms,
            "speedup_vs_fastest_cpp_fp32": fastest / ms if fastest else None, "tflops": flops / ms / 1e9,
            "rel_err_vs_fp32": rel(got), "rel_err_of_bf16_operands": rel(operands_only)}


def _print(rows: list[dict]) -> None:
    for r in rows:
        tri = f"{r['triton_ms']:.4f} ms" if r["triton_ms"] else "-"
        line = f"{r['model']:>13} {r['kernel']:>22}: triton {tri:>11}  torch {r['torch_ms']:.4f} ms"
        if r.get("speedup_vs_torch"):
            line += f"  x{r['speedup_vs_torch']:.2f}"
        if "gbps" in r:
            line += f"  {r['gbps']:.1f} GB/s" + (f" ({r['frac_peak_bw']:.0%} of peak)" if r.get("frac_peak_bw") else "")
        if "tflops" in r:
            peak = f" ({r['frac_peak_tflops']:.0%})" if r.get("frac_peak_tflops") else ""
            line += f"  {r['tflops']:.2f} TFLOP/s{peak}"
        if "causal_share_ms" in r:
            line += f"  causal-share bound {r['causal_share_ms']:.2f} ms (torch {r['torch_vs_causal_share']:.2f}x)"
            for march, c in r["cpp"].items():
                line += f"\n{'':>38}C++ {march}: "
                line += (f"{c['ms']:.2f} ms, x{c['speedup_vs_torch']:.2f} vs torch, "
                         f"{c['vs_causal_share']:.2f}x the bound" if "ms" in c else c["skipped"])
            if "cpp_bf16" in r:
                b = r["cpp_bf16"]
                line += (f"\n{'':>38}C++ bf16 products: {b['ms']:.2f} ms, x{b['speedup_vs_torch']:.2f} vs torch, "
                         f"x{b['speedup_vs_fastest_cpp_fp32'] or 0:.2f} vs the fastest fp32 build, relative error "
                         f"{b['rel_err_vs_fp32']:.1e} (bf16 operands alone {b['rel_err_of_bf16_operands']:.1e})")
        if r.get("vs_sdpa_same_m"):
            line += f"  time/SDPA(same m) {r['vs_sdpa_same_m']:.2f}"
        print(line)


def _isa_flags() -> list[str]:
    keep = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile", "asimd",
            "sve")
    flags = set(_cpp.cpu_flags().split())
    return [f for f in keep if f in flags]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chunkcache bench kernels", description=__doc__)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--tokens", type=positive, default=None, help="prompt length (default 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--ratio", type=float, default=0.15, help="fraction of tokens recomputed")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--reps", type=positive, default=5, help="timed repetitions on CPU")
    p.add_argument("--isa", default="native", help="comma list of C++ builds to time on the CPU: native, x86-64-v2, "
                   "x86-64-v3, x86-64-v4 (those this CPU cannot run are reported as skipped)")
    p.add_argument("--prefill", action="store_true", help="also full-prefill and precompute tokens/s per "
                   "implementation (a random model of each shape that fits in memory)")
    p.add_argument("--out", type=Path, default=Path("bench_kernels.json"))
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    run_triton = cuda and triton_available()
    if not run_triton:
        why = "no CUDA device" if not cuda else "triton is not installed"
        print(f"{why}: Triton kernel timings need a GPU; timing the torch references only (GPU figures still open)")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes[args.dtype or ("bf16" if cuda else "fp32")]
    tokens = args.tokens or (8192 if cuda else 1024)
    dev = _device_info(cuda)
    rows, dispatch, prefill = [], {}, {}
    isas = [x.strip() for x in args.isa.split(",") if x.strip()]
    device = "cuda" if cuda else "cpu"
    with torch.inference_mode():
        for model in args.models:
            rows += bench_model(model, tokens, args.ratio, dtype, device, dev, run_triton, args.reps, isas)
            n_layers, n_heads, n_kv, d = MODELS[model]
            shape = AttentionShape(n_heads, n_kv, d, str(dtype).removeprefix("torch."), device,
                                   torch.get_num_threads(), 8192)
            dispatch[model] = AttentionDispatch.build("auto", shape).summary()
    _print(rows)
    for model, summary in dispatch.items():
        builds = ", ".join(f"{m} {x:.2f}x" for m, x in summary["cpp_builds"].items())
        print(f"{model:>13} kernels=auto ({summary['source']}, {summary['isa']}, C++ build {summary['cpp_march']}"
              + (f" of {builds} native" if builds else "") + "): "
              + ", ".join(f"{n} -> {c['choice']}" for n, c in summary["classes"].items()))
    if args.prefill:
        for model in args.models:
            if model == "smollm2-135m" or cuda:
                prefill[model] = prefill_speed(model, MODELS[model], dtype, device, tokens)
    cpu = {"model": _cpp.cpuinfo("model name"), "isa_flags": _isa_flags(), "threads": torch.get_num_threads()}
    report = {"device": dev, "cpu": cpu,
              "dtype": str(dtype), "tokens": tokens, "ratio": args.ratio, "triton": run_triton,
              "torch": torch.__version__, "results": rows, "dispatch": dispatch, "prefill": prefill}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
