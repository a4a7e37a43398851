"""Every Triton kernel compiled on a CUDA device against its torch reference, over a small grid (the device check).

tests/kernels/ compares the same pairs on the CPU interpreter (TRITON_INTERPRET=1), which checks the math but not
what only the compiler and the hardware see; tests/kernels/test_compile_cuda.py compiles them without a GPU. This
runs them: fp32 and bf16, scattered and contiguous positions, the default model's head shape (9 / 3 heads, d 64)
and d 128. Prints one line per case, writes JSON, exits 1 on any mismatch.

python benchmarks/gpu_kernels_check.py [--json OUT]   (needs CUDA; do not set TRITON_INTERPRET)
A dry run of this script on the CPU interpreter: TRITON_INTERPRET=1 python benchmarks/gpu_kernels_check.py --device cpu
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

from chunkcache.kernels.attention_dispatch import query_positions
from chunkcache.kernels.deviation import select_topk_deviation_ref, select_topk_deviation_triton
from chunkcache.kernels.deviation import token_deviation_ref, token_deviation_triton
from chunkcache.kernels.rope_shift import rope_shift_ref, rope_shift_triton
from chunkcache.kernels.scatter_kv import scatter_kv_ref, scatter_kv_triton
from chunkcache.kernels.sparse_attention import plan_sparse_attention, sparse_query_attention_ref
from chunkcache.kernels.sparse_attention import sparse_query_attention_triton

TOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2}  # max |error| / max(1, max |ref|)
SHAPES = ((9, 3, 64), (8, 2, 128))  # (n_heads, n_kv, head_dim)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.float(), ref.float()
    return float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def cases(dev: torch.device):
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for n_heads, n_kv, d in SHAPES:
            r = lambda *shape: torch.randn(*shape, generator=gen).to(dev, dtype)  # noqa: E731
            inv_freq = (1.0 / 1e5 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).float().to(dev)
            keys, deltas = r(n_kv, 700, d), (torch.arange(700) * 7 - 900).to(dev)
            yield ("rope_shift", dtype, d), rope_shift_triton(keys, deltas, inv_freq), rope_shift_ref(keys, deltas,
                                                                                                          inv_freq)
            ck, cv, kn, vn = r(n_kv, 900, d), r(n_kv, 900, d), r(n_kv, 300, d), r(n_kv, 300, d)
            idx = torch.randperm(900, generator=gen)[:300].to(dev)
            tk, tv = ck.clone(), cv.clone()
            scatter_kv_triton(tk, tv, kn, vn, idx)
            scatter_kv_ref(ck, cv, kn, vn, idx)
            yield ("scatter_kv", dtype, d), torch.stack((tk, tv)), torch.stack((ck, cv))
            fk, cached, fv, cv2 = r(n_kv, 1000, d), r(n_kv, 1000, d), r(n_kv, 1000, d), r(n_kv, 1000, d)
            yield ("token_deviation", dtype, d), token_deviation_triton(fk, cached), token_deviation_ref(fk, cached)
            got = select_topk_deviation_triton(fk, cached, fv, cv2, 150)
            want = select_topk_deviation_ref(fk, cached, fv, cv2, 150)
            yield ("select_topk_deviation", dtype, d), got.float(), want.float()
            for kv_len, m, contiguous in ((1500, 200, False), (6000, 900, False), (4100, 64, True)):
                q, k, v = r(n_heads, m, d), r(n_kv, kv_len + 8, d), r(n_kv, kv_len + 8, d)
                pos = query_positions(kv_len, m, contiguous, gen).to(dev)
                plan = plan_sparse_attention(pos, kv_len, dtype=dtype)
                scale = 1 / math.sqrt(d)
                want = sparse_query_attention_ref(q.float(), k.float(), v.float(), plan_sparse_attention(
                    plan.q_positions, kv_len, dtype=torch.float32), scale)
                yield (f"sparse_attention {kv_len}x{m}{'' if contiguous else ' scattered'}", dtype, d), \
                    sparse_query_attention_triton(q, k, v, plan, scale), want


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run on the interpreter (TRITON_INTERPRET=1)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    rows = []
    for (name, dtype, d), got, want in cases(dev):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        err = rel_err(got, want)
        ok = got.shape == want.shape and err <= TOL[dtype]
        rows.append({"kernel": name, "dtype": str(dtype).removeprefix("torch."), "head_dim": d, "rel_err": err,
                     "ok": ok})
        print(f"{'ok  ' if ok else 'FAIL'} {name:38s} {rows[-1]['dtype']:8s} d={d:3d}  rel err {err:.2e}", flush=True)
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (interpreter)",
           "torch": torch.__version__, "cases": rows, "failed": sum(not r["ok"] for r in rows)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"{len(rows) - out['failed']} of {len(rows)} cases match on {out['device']}")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
