"""Compile every kernel for sm_80 and sm_90 without a GPU; prints one JSON object per compile.

Run in its own process with TRITON_INTERPRET unset: Triton fixes interpreter vs compiled mode for
its own standard library when it is first imported, so the interpreter tests' process cannot compile.
"""

import json
import os
import sys

import torch

from chunkcache.kernels import deviation, rope_shift, scatter_kv, sparse_attention

TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def compile_one(name: str, lazy, types: dict, consts: dict, arch: int, **options) -> dict:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lazy.fn.__globals__.update(tl=tl, triton=triton)
    fn = triton.jit(lazy.fn)
    sig = {p: "constexpr" if p in consts else types.get(p, "i32") for p in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as err:  # reported to the test, which fails on it
        return {"name": name, "arch": arch, "error": repr(err)[:2000]}
    ptx = kernel.asm["ptx"]
    return {"name": name, "arch": arch, "cubin": "cubin" in kernel.asm, "shared": kernel.metadata.shared,
            "approx_trig": "sin.approx" in ptx or "cos.approx" in ptx}


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run with TRITON_INTERPRET unset"
    out = []
    for arch in (80, 90):
        for dtype, t in TY.items():
            for d in (64, 128):
                cfg = sparse_attention.launch_config(4096, d, dtype)
                options = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
                types = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}", "pos_ptr": "*i64",
                         "qk_scale": "fp32"}
                out.append(compile_one(f"sparse_attention/{t}/d{d}", sparse_attention._sparse_attention_kernel,
                                       types, cfg, arch, **options))
    for t in ("bf16", "fp32"):
        out.append(compile_one(f"rope_shift/{t}", rope_shift._rope_shift_kernel,
                               {"k_ptr": f"*{t}", "o_ptr": f"*{t}", "delta_ptr": "*i64", "freq_ptr": "*fp32"},
                               {"BLOCK_T": 32, "BLOCK_H": 64, "ROWS": 4}, 90))
        out.append(compile_one(f"deviation/{t}", deviation._deviation_kernel,
                               {"fk_ptr": f"*{t}", "ck_ptr": f"*{t}", "fv_ptr": f"*{t}", "cv_ptr": f"*{t}",
                                "out_ptr": "*fp32"}, {"HAS_V": True, "BLOCK_T": 64, "BLOCK_D": 128}, 90))
        out.append(compile_one(f"scatter_kv/{t}", scatter_kv._scatter_kv_kernel,
                               {"ck_ptr": f"*{t}", "cv_ptr": f"*{t}", "kn_ptr": f"*{t}", "vn_ptr": f"*{t}",
                                "idx_ptr": "*i64"}, {"BLOCK_M": 32, "BLOCK_D": 128}, 90))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
