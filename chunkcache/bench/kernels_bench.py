"""`chunkcache bench kernels`: each Triton kernel vs its torch reference (and SDPA for attention).

On the CPU the sparse-query attention row also times the C++ kernel (`cpp_ms`) and the compute-share
bound `causal_share_ms`: SDPA's fused causal kernel over every position, times the share of the causal
triangle's work the selected queries need (what the scattered queries would cost at full prefill's rate).

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

from chunkcache.kernels._triton import triton_available
from chunkcache.kernels.deviation import select_topk_deviation_ref, select_topk_deviation_triton
from chunkcache.kernels.rope_shift import rope_shift_ref, rope_shift_triton
from chunkcache.kernels.scatter_kv import scatter_kv_ref, scatter_kv_triton
from chunkcache.kernels.sparse_attention import (cpu_kernel_applies, plan_sparse_attention,
                                                 sparse_query_attention_cpu, sparse_query_attention_ref,
                                                 sparse_query_attention_triton)

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
                run_triton: bool, reps: int) -> list[dict]:
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
    tri, ref = timed(lambda: rope_shift_triton(keys, deltas, inv_freq, out), lambda: rope_shift_ref(keys, deltas, inv_freq, out))
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
    if not cuda and cpu_kernel_applies(q, k, v):
        cpp = _time_ms(lambda: sparse_query_attention_cpu(q, k, v, plan, scale), False, reps)
        q_all = torch.randn(n_heads, tokens, d, generator=gen).to(device, dtype)  # [n_heads, N, d]
        causal = _time_ms(lambda: F.scaled_dot_product_attention(q_all[None], k[None], v[None], is_causal=True,
                                                                 scale=scale, enable_gqa=n_heads != n_kv), False, reps)
        share = float((positions.double() + 1).sum()) / (tokens * (tokens + 1) / 2)
        extra = {"cpp_ms": cpp, "cpp_speedup_vs_torch": ref / cpp, "causal_share_ms": causal * share,
                 "cpp_vs_causal_share": cpp / (causal * share)}
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


def _print(rows: list[dict]) -> None:
    for r in rows:
        tri = f"{r['triton_ms']:.4f} ms" if r["triton_ms"] else "-"
        line = f"{r['model']:>13} {r['kernel']:>22}: triton {tri:>11}  torch {r['torch_ms']:.4f} ms"
        if r.get("speedup_vs_torch"):
            line += f"  x{r['speedup_vs_torch']:.2f}"
        if "gbps" in r:
            line += f"  {r['gbps']:.1f} GB/s" + (f" ({r['frac_peak_bw']:.0%} of peak)" if r.get("frac_peak_bw") else "")
        if "tflops" in r:
            line += f"  {r['tflops']:.2f} TFLOP/s" + (f" ({r['frac_peak_tflops']:.0%})" if r.get("frac_peak_tflops") else "")
        if r.get("cpp_ms"):
            line += (f"  C++ {r['cpp_ms']:.4f} ms (x{r['cpp_speedup_vs_torch']:.2f} vs torch, "
                     f"{r['cpp_vs_causal_share']:.2f} x the causal-share bound {r['causal_share_ms']:.4f} ms)")
        if r.get("vs_sdpa_same_m"):
            line += f"  time/SDPA(same m) {r['vs_sdpa_same_m']:.2f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chunkcache bench kernels", description=__doc__)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--tokens", type=int, default=None, help="prompt length (default 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--ratio", type=float, default=0.15, help="fraction of tokens recomputed")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions on CPU")
    p.add_argument("--out", type=Path, default=Path("bench_kernels.json"))
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    run_triton = cuda and triton_available()
    if not run_triton:
        why = "no CUDA device" if not cuda else "triton is not installed"
        print(f"{why}: Triton kernel timings need a GPU; timing the torch references only (GPU figures still open)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("bf16" if cuda else "fp32")]
    tokens = args.tokens or (8192 if cuda else 1024)
    dev = _device_info(cuda)
    rows = []
    with torch.inference_mode():
        for model in args.models:
            rows += bench_model(model, tokens, args.ratio, dtype, "cuda" if cuda else "cpu", dev, run_triton, args.reps)
    _print(rows)
    report = {"device": dev, "dtype": str(dtype), "tokens": tokens, "ratio": args.ratio, "triton": run_triton,
              "torch": torch.__version__, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
