"""Placing one layer of chunk KV, measured alone: the write before the change (each chunk rotated on its own by
the torch reference's temporaries-and-cat formula, then copied) against now (the chunks laid side by side
concatenated, rotated by per-token deltas straight into the cache by `rope_shift_ref`). Shapes of the default
model (3 KV heads, head_dim 64), fp32, 2 threads; median of 30 calls each.

python benchmarks/place_micro.py benchmarks/place_micro.json
"""
import json
import statistics
import sys
import time

import torch

from chunkcache.kernels._cpp import cpuinfo
from chunkcache.kernels.rope_shift import rope_shift_ref

N_KV, D = 3, 64
INV_FREQ = 1.0 / (100000 ** (torch.arange(0, D, 2).float() / D))  # [d/2], the default model's theta


def before(keys, deltas, out):
    """The reference's formula before the change: two products, two sums, a cat, then a copy into out."""
    angle = deltas.float()[:, None] * INV_FREQ[None]  # [T, d/2]
    cos, sin = angle.cos(), angle.sin()
    k1, k2 = keys.chunk(2, -1)
    out.copy_(torch.cat((k1 * cos - k2 * sin, k2 * cos + k1 * sin), -1))


def median_ms(fn, n=30):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(path):
    torch.set_num_threads(2)
    rows = []
    for chunks, length in ((10, 160), (20, 300)):
        g = torch.Generator().manual_seed(chunks)
        ks = [torch.randn(N_KV, length, D, generator=g) for _ in range(chunks)]
        vs = [torch.randn(N_KV, length, D, generator=g) for _ in range(chunks)]
        n = chunks * length
        k_dst, v_dst = torch.empty(N_KV, n + 100, D), torch.empty(N_KV, n + 100, D)  # one layer of a merged cache
        deltas = torch.repeat_interleave(torch.arange(chunks) * length + 5, torch.full((chunks,), length))  # [n]

        def per_chunk():
            for i, (k, v) in enumerate(zip(ks, vs, strict=True)):
                sl = slice(i * length, (i + 1) * length)
                before(k, deltas[sl], k_dst[:, sl])
                v_dst[:, sl].copy_(v)

        def one_run():
            rope_shift_ref(torch.cat(ks, 1), deltas, INV_FREQ, out=k_dst[:, :n])
            v_dst[:, :n].copy_(torch.cat(vs, 1))

        whole = torch.cat(ks, 1)  # [n_kv, n, d]
        rows.append({"chunks": chunks, "tokens_per_chunk": length,
                     "layer_before_ms": median_ms(per_chunk), "layer_after_ms": median_ms(one_run),
                     "rotate_all_before_ms": median_ms(lambda: before(whole, deltas, k_dst[:, :n])),
                     "rotate_all_after_ms": median_ms(lambda: rope_shift_ref(whole, deltas, INV_FREQ,
                                                                             out=k_dst[:, :n]))})
        print(rows[-1], flush=True)
    with open(path, "w") as f:
        json.dump({"cpu": cpuinfo("model name"), "avx512f": " avx512f" in " " + cpuinfo("flags"),
                   "torch": torch.__version__, "threads": 2, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
