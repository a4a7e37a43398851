"""What `linear_dtype="bfloat16"` decides at start-up on CPUs without AVX512-BF16, emulated on one with it.

The engine takes bf16 linear layers only where its start-up probe (`runner/linear.bf16_speedup`: the default
model's widest decoder projection, bf16 against fp32, paired) measures >= MIN_SPEEDUP. Two CPU classes cannot be
rented here, so they are emulated on this one with the backends' own documented switches:

- an AVX-512 CPU without BF16 (Skylake-SP, Cascade Lake, Ice Lake): ONEDNN_MAX_CPU_ISA=AVX512_CORE, so oneDNN's
  bf16 GEMM converts in software as it must there;
- an AVX2-only CPU: torch routes bf16 GEMMs to oneDNN only when cpuinfo reports AVX-512 BW/VL/DQ, otherwise to
  its own kernel, so `--without-onednn` turns oneDNN off and ATEN_CPU_CAPABILITY=avx2,
  MKL_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2 cap the rest.

An emulation, not those CPUs: their caches and clocks differ. It shows the probe's decision on the code path
those CPUs take.

ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/bf16_probe.py --label avx512-no-bf16 --json out.json
"""

import argparse
import json
import os
import statistics
import time

import torch

from chunkcache.kernels._cpp import cpu_flags, cpuinfo
from chunkcache.runner.linear import MIN_SPEEDUP, apply_linear_dtype, bf16_speedup, decoder_linears, probe_layer
from chunkcache.runner.loader import load_model

CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--without-onednn", action="store_true", help="torch's own bf16 GEMM (an AVX2-only CPU's)")
    ap.add_argument("--probes", type=int, default=7, help="extra probe runs, for the spread")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.without_onednn
    model = load_model().model
    widest = probe_layer(decoder_linears(model))  # the layer the engine's probe times
    ratios = [bf16_speedup(widest) for _ in range(args.probes)]
    decision, _ = apply_linear_dtype(model, "bfloat16")  # the engine's own start-up step
    out = {"label": args.label, "machine": cpuinfo("model name"),
           "avx512_bf16": "avx512_bf16" in cpu_flags().split(), "torch": torch.__version__,
           "threads": args.threads, "date": time.strftime("%F"), "onednn": torch.backends.mkldnn.enabled,
           "caps": {k: os.environ.get(k) for k in CAPS}, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "probe_layer": [widest.in_features, widest.out_features], "min_speedup": MIN_SPEEDUP,
           "probe_ratios": ratios, "probe_median": statistics.median(ratios),
           "decision": decision.dtype, "describe": decision.describe()}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
