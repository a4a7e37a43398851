"""Why the portable C++ build can beat -march=native: the same kernel built with native, native with
-mtune=generic, and x86-64-v4, timed interleaved on one layer (936 scattered queries over 6,240 keys, the default
model's 9 / 3 heads, head_dim 64, fp32, 2 threads), plus fp32 GEMM throughput at the model's shapes as a control.
Builds go to a scratch kernel cache. x86 with AVX-512 only.

python benchmarks/cpp_build_tuning.py benchmarks/cpp_build_tuning_epyc.json
"""
import json
import os
import statistics
import sys
import tempfile
import time

import torch


def main(path):
    os.environ["CHUNKCACHE_KERNEL_CACHE"] = tempfile.mkdtemp()
    from chunkcache.kernels import _cpp, sparse_attention as sa
    from chunkcache.kernels.attention_dispatch import query_positions

    torch.set_num_threads(2)
    base, entries = _cpp.FLAGS, {}
    for name, march, extra in (("native", "native", ()), ("native -mtune=generic", "native", ("-mtune=generic",)),
                               ("x86-64-v4", "x86-64-v4", ())):
        _cpp.FLAGS = base + extra  # part of the build's hash: a separate .so
        _cpp.load.cache_clear()
        sa._cpu_entry.cache_clear()
        entries[name] = sa._cpu_entry(march)
    _cpp.FLAGS = base
    kv_len, m = 6240, 936
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(9, m, 64), torch.randn(3, kv_len, 64), torch.randn(3, kv_len, 64)
    plan = sa.plan_sparse_attention(query_positions(kv_len, m, False, gen), kv_len)
    real = sa._cpu_entry

    def run(name):
        sa._cpu_entry = lambda march="native": entries[name]
        try:
            t0 = time.perf_counter()
            sa.sparse_query_attention_cpu(q, k, v, plan, 0.125)
            return (time.perf_counter() - t0) * 1e3
        finally:
            sa._cpu_entry = real
    times = {n: [] for n in entries}
    for n in entries:
        run(n)
    for _ in range(15):
        for n in entries:
            times[n].append(run(n))
    attention_ms = {n: round(statistics.median(t), 2) for n, t in times.items()}
    gemm = {}
    for mm, kk, nn in ((1600, 576, 1536), (1600, 1536, 576), (6200, 576, 576)):
        a, b = torch.randn(mm, kk), torch.randn(kk, nn)
        a @ b
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        gemm[f"{mm}x{kk}@{kk}x{nn}"] = round(2 * mm * kk * nn / statistics.median(ts) / 1e9)
    out = {"cpu": _cpp.cpuinfo("model name"), "avx512f": "avx512f" in _cpp.cpu_flags().split(),
           "compiler": _cpp.compiler_version(_cpp.compiler()), "attention_ms": attention_ms, "gemm_gflops": gemm}
    print(json.dumps(out, indent=1))
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
