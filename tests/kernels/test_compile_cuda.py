"""Compile every kernel ahead of time for A100 (sm_80) and H100 (sm_90) without a GPU.

The interpreter tests check the math; this checks what only the real compiler sees (types, layouts,
shared memory within the architecture's per-block limit) down to a cubin with triton's bundled ptxas.
"""

import pytest
import torch

from chunkcache.kernels import deviation, rope_shift, scatter_kv, sparse_attention

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _compile(lazy, types: dict, consts: dict, arch: int, **options):
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lazy.fn.__globals__.update(tl=tl, triton=triton)
    fn = triton.jit(lazy.fn)
    sig = {p: "constexpr" if p in consts else types.get(p, "i32") for p in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    assert "cubin" in kernel.asm
    assert kernel.metadata.shared <= SHARED_LIMIT[arch], f"{kernel.metadata.shared} B of shared memory"
    return kernel


@pytest.fixture(autouse=True)
def compiled_mode(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d", [64, 128])
def test_sparse_attention_compiles(arch, dtype, d):
    t = TY[dtype]
    cfg = sparse_attention.launch_config(4096, d, dtype)
    options = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
    types = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}", "pos_ptr": "*i64", "qk_scale": "fp32"}
    _compile(sparse_attention._sparse_attention_kernel, types, cfg, arch, **options)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_memory_kernels_compile(dtype):
    t = TY[dtype]
    _compile(rope_shift._rope_shift_kernel,
             {"k_ptr": f"*{t}", "o_ptr": f"*{t}", "delta_ptr": "*i64", "freq_ptr": "*fp32"},
             {"BLOCK_T": 32, "BLOCK_H": 64, "ROWS": 4}, 90)
    _compile(deviation._deviation_kernel,
             {"fk_ptr": f"*{t}", "ck_ptr": f"*{t}", "fv_ptr": f"*{t}", "cv_ptr": f"*{t}", "out_ptr": "*fp32"},
             {"HAS_V": True, "BLOCK_T": 64, "BLOCK_D": 128}, 90)
    _compile(scatter_kv._scatter_kv_kernel,
             {"ck_ptr": f"*{t}", "cv_ptr": f"*{t}", "kn_ptr": f"*{t}", "vn_ptr": f"*{t}", "idx_ptr": "*i64"},
             {"BLOCK_M": 32, "BLOCK_D": 128}, 90)


def test_rope_uses_precise_sin_cos():
    """Large angles (position x frequency up to ~1e4 rad) need libdevice sin/cos, not the .approx instructions."""
    kernel = _compile(rope_shift._rope_shift_kernel,
                      {"k_ptr": "*bf16", "o_ptr": "*bf16", "delta_ptr": "*i64", "freq_ptr": "*fp32"},
                      {"BLOCK_T": 32, "BLOCK_H": 32, "ROWS": 4}, 90)
    assert "sin.approx" not in kernel.asm["ptx"] and "cos.approx" not in kernel.asm["ptx"]
