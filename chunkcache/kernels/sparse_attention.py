"""Attention for a sorted subset of query tokens over the whole merged KV, causal by position.

The merged cache is laid out by position: key j sits at position j. Query i (position p_i) sees
keys 0..p_i. GQA: query head h reads KV head h // (n_heads / n_kv_heads), as in HF repeat_kv.

The Triton kernel is FlashAttention-style: one program per (block of query rows, KV head) with the
query heads of a GQA group packed as rows (row r = query r // g, head kv*g + r % g), so every key
tile is loaded once per group. Key tiles run up to the block's last position only; tiles below the
block's first position need no mask. Online softmax in fp32 (exp2), fp16/bf16/fp32 inputs.

The CPU fast path (`sparse_query_attention_cpu`, csrc/sparse_attention_cpu.cpp) does the same in C++ for
fp32: GQA rows packed, key tiles up to the block's last position, the causal mask only on the tiles
that cross a row's position (no mask tensor), online softmax in base 2. Its bf16-product variant (AVX512-BF16
builds, opt-in by `attention_dtype`) is kernels/sparse_attention_bf16.py.

A plan that carries a `ContextTemper` (APE mode) always runs `ape_attention_ref` (torch, fp32).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from chunkcache.kernels._cpp import load
from chunkcache.kernels._triton import cdiv, interpreting, lazy_jit, next_pow2, want_triton
from chunkcache.kernels.ape_attention import ContextTemper, ape_attention_ref

tl: Any = None  # triton.language, bound by lazy_jit before the first compile


@dataclass(frozen=True)
class AttentionPlan:
    """Built once per request from the query positions; reused by every layer.

    q_positions: [m] int64, strictly increasing. kv_len: keys visible to the last query's layer call.
    q_end: last query position + 1 (host int: writers of these rows need no device sync to know it).
    blocks: (q_start, q_end, k_end, mask [q_end-q_start, k_end] additive or None) for the CPU path: each
    block of queries reads keys [0, k_end) only, so little of the causal triangle is wasted.
    """

    q_positions: torch.Tensor
    kv_len: int
    causal_square: bool
    blocks: tuple[tuple[int, int, int, torch.Tensor | None], ...]
    q_end: int = 0  # last query position + 1 (known without a host sync)
    temper: ContextTemper | None = None  # APE: tempered attention of queries after the context span


def plan_sparse_attention(q_positions: torch.Tensor, kv_len: int, num_blocks: int = 16, min_block: int = 64,
                          dtype: torch.dtype = torch.float32, temper: ContextTemper | None = None) -> AttentionPlan:
    """Split sorted query positions into at most `num_blocks` blocks of at least `min_block` queries and
    precompute their additive causal masks (0 / -inf, dtype). Each block reads every key up to its last
    position, so tiny blocks would re-read the keys for a handful of rows (a 20-token suffix: one block)."""
    if q_positions.dim() != 1 or q_positions.numel() == 0:
        raise ValueError(f"q_positions must be a non-empty 1-D tensor, got {tuple(q_positions.shape)}")
    pos = q_positions.to(torch.int64).cpu()
    if pos.numel() > 1 and bool((pos[1:] <= pos[:-1]).any()):
        raise ValueError("q_positions must be strictly increasing")
    if int(pos[-1]) >= kv_len or int(pos[0]) < 0:
        raise ValueError(f"q_positions must lie in [0, kv_len={kv_len})")
    m = pos.numel()
    square = m == kv_len
    blocks = []
    if not square:
        step = max(min_block, -(-m // num_blocks))
        for s in range(0, m, step):
            e = min(m, s + step)
            p = pos[s:e]
            k_end = int(p[-1]) + 1
            needs_mask = int(p[0]) + 1 < k_end
            mask = None
            if needs_mask:
                dev = q_positions.device
                visible = torch.arange(k_end, device=dev)[None, :] <= q_positions[s:e, None]  # [e-s, k_end]
                mask = torch.zeros(visible.shape, dtype=dtype, device=dev).masked_fill_(~visible, float("-inf"))
            blocks.append((s, e, k_end, mask))
    return AttentionPlan(q_positions.to(torch.int64), kv_len, square, tuple(blocks), int(pos[-1]) + 1, temper)


def sparse_query_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                               scale: float) -> torch.Tensor:
    """q: [n_heads, m, d]; k, v: [n_kv, >= kv_len, d] (merged cache, by position). Returns [n_heads, m, d]."""
    n_heads, m, d = q.shape
    n_kv = k.shape[0]
    if n_heads % n_kv or k.shape != v.shape or k.shape[-1] != d or m != plan.q_positions.numel():
        raise ValueError(f"bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} for {m} planned queries")
    if k.shape[1] < plan.kv_len:
        raise ValueError(f"cache holds {k.shape[1]} positions, plan needs {plan.kv_len}")
    g = n_heads // n_kv
    if plan.causal_square:
        return F.scaled_dot_product_attention(q[None], k[None, :, :m], v[None, :, :m], is_causal=True,
                                              scale=scale, enable_gqa=g > 1)[0]
    out = torch.empty_like(q)
    for s, e, k_end, mask in plan.blocks:
        out[:, s:e] = F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, :k_end], v[None, :, :k_end],
                                                     attn_mask=mask, scale=scale, enable_gqa=g > 1)[0]
    return out


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> None:
    n_heads, m, d = q.shape
    n_kv = k.shape[0]
    if k.dim() != 3 or n_heads % n_kv or k.shape != v.shape or k.shape[-1] != d or m != plan.q_positions.numel():
        raise ValueError(f"bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} for {m} planned queries")
    if k.shape[1] < plan.kv_len:
        raise ValueError(f"cache holds {k.shape[1]} positions, plan needs {plan.kv_len}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")


@lazy_jit
def _sparse_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, pos_ptr, ROWS, G, D, qk_scale,
                             s_qh, s_qm, s_qd, s_kh, s_kn, s_kd, s_vh, s_vn, s_vd, s_oh, s_om, s_od,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Program (row block, KV head). ROWS = m * G packed rows; qk_scale = scale * log2(e).

    IEEE: fp32 dots without TF32. UPCAST: fp32 dots for bf16 (the CPU interpreter lacks bf16 dots).
    """
    kvh = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = r < ROWS
    qi = (r // G).to(tl.int64)
    head = kvh * G + (r % G)
    pos = tl.load(pos_ptr + qi, mask=r_ok, other=0).to(tl.int32)  # padded rows see key 0 only
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = d < D
    q = tl.load(q_ptr + head[:, None] * s_qh + qi[:, None] * s_qm + d[None, :] * s_qd,
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    lo = tl.min(tl.where(r_ok, pos, 2147483647), axis=0)
    hi = tl.max(pos, axis=0)
    k_base = k_ptr + kvh * s_kh + d[:, None] * s_kd  # [BLOCK_D, 1], K read transposed
    v_base = v_ptr + kvh * s_vh + d[None, :] * s_vd  # [1, BLOCK_D]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    full_end = ((lo + 1) // BLOCK_N) * BLOCK_N  # keys [0, full_end) are visible to every row
    for start in range(0, hi + 1, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n <= hi
        kt = tl.load(k_base + n.to(tl.int64)[None, :] * s_kn, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        vt = tl.load(v_base + n.to(tl.int64)[:, None] * s_vn, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee") * qk_scale  # [BLOCK_M, BLOCK_N]
        else:
            s = tl.dot(q, kt) * qk_scale
        if start >= full_end:
            s = tl.where(n[None, :] <= pos[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if UPCAST:
            p = p.to(v_ptr.dtype.element_ty).to(tl.float32)
        else:
            p = p.to(v_ptr.dtype.element_ty)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, vt, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p, vt)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + head[:, None] * s_oh + qi[:, None] * s_om + d[None, :] * s_od,
             out.to(o_ptr.dtype.element_ty), mask=r_ok[:, None] & d_ok[None, :])


def launch_config(rows: int, d: int, dtype: torch.dtype) -> dict:
    """Tile sizes, flags and launch options of the kernel for `rows` = m * g packed rows of head_dim d."""
    block_d = max(16, next_pow2(d))
    if interpreting():  # the interpreter's cost grows with the tile count, not the tile size: keep tiles small
        block_m, block_n = 16, 16
    else:
        block_m = 16 if rows <= 16 else 64
        block_n = 64 if dtype != torch.float32 and block_d <= 128 else 32
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "IEEE": dtype == torch.float32,
            "UPCAST": interpreting() and dtype == torch.bfloat16, "num_warps": 4,
            "num_stages": 2 if dtype == torch.float32 else 3}


def sparse_query_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                                  scale: float) -> torch.Tensor:
    """Triton version of `sparse_query_attention_ref` (same signature and semantics); any strides."""
    _check(q, k, v, plan)
    n_heads, m, d = q.shape
    n_kv = k.shape[0]
    g = n_heads // n_kv
    out = torch.empty_like(q)
    pos = plan.q_positions.to(device=q.device, dtype=torch.int64).contiguous()
    rows = m * g
    cfg = launch_config(rows, d, q.dtype)
    grid = (cdiv(rows, cfg["BLOCK_M"]), n_kv)
    _sparse_attention_kernel[grid](q, k, v, out, pos, rows, g, d, scale * 1.4426950408889634,
                                   *q.stride(), *k.stride(), *v.stride(), *out.stride(), **cfg)
    return out


CPU_HEAD_DIMS = (64, 128)  # head dims the C++ kernel is instantiated for
IMPLS = ("torch", "cpp", "triton")


@functools.cache
def _cpu_entry(march: str = "native") -> Any:
    """The C++ kernel's entry point (built for `march`) with its argument types, or None when it cannot be
    built here."""
    lib = load("sparse_attention_cpu", march)
    if lib is None:
        return None
    fn = lib.sparse_attention_f32
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 14 + [ctypes.c_float, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def cpu_vector_width(march: str = "native") -> int | None:
    """Floats per vector of the C++ build for `march` (16 AVX-512, 8 AVX2, 4 SSE/NEON); None when unbuilt."""
    lib = load("sparse_attention_cpu", march)
    return None if lib is None else int(lib.sparse_attention_vector_width())


def cpu_kernel_threads(march: str = "native") -> str | None:
    """Where the C++ build for `march` runs its threads: "openmp" (torch's pool) or "std::thread"; None when
    unbuilt."""
    lib = load("sparse_attention_cpu", march)
    return None if lib is None else ("openmp" if lib.sparse_attention_openmp() else "std::thread")


def cpu_kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, march: str = "native") -> bool:
    """Whether `sparse_query_attention_cpu` takes these tensors: fp32 on the CPU, head_dim 64 or 128, built."""
    return (q.device.type == k.device.type == v.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32
            and q.shape[-1] in CPU_HEAD_DIMS and _cpu_entry(march) is not None)


def _check_positions(pos: torch.Tensor, m: int, q_end: int, cache_len: int) -> None:
    """The C++ kernel trusts its positions: [m] int64 on the CPU, strictly increasing, in [0, q_end), q_end <= cache."""
    if pos.dtype != torch.int64 or pos.device.type != "cpu" or pos.shape != (m,):
        raise ValueError(f"plan positions must be [{m}] int64 on the CPU, got {tuple(pos.shape)} {pos.dtype} "
                         f"on {pos.device}")
    if int(pos[0]) < 0 or int(pos[-1]) + 1 != q_end or q_end > cache_len:
        raise ValueError(f"plan positions span [{int(pos[0])}, {int(pos[-1])}] but q_end is {q_end} and the cache "
                         f"holds {cache_len}")
    if m > 1 and not bool((pos[1:] > pos[:-1]).all()):
        raise ValueError("plan positions must be strictly increasing")


def sparse_query_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                               scale: float, block_q: int = 32, march: str = "native") -> torch.Tensor:
    """C++ version of `sparse_query_attention_ref` (same signature and semantics) for fp32 CPU tensors.

    block_q: queries per task (times the GQA group size = rows sharing each key tile). march: the ISA build
    (native, or x86-64-v2|v3|v4 for the portable builds).
    """
    _check(q, k, v, plan)
    if not cpu_kernel_applies(q, k, v, march):
        raise ValueError(f"the C++ kernel takes fp32 CPU tensors with head_dim in {CPU_HEAD_DIMS} "
                         f"(got {q.dtype} on {q.device}, head_dim {q.shape[-1]}) once built")
    n_heads, m, d = q.shape
    pos = plan.q_positions.contiguous()
    _check_positions(pos, m, plan.q_end, k.shape[1])
    q = q if q.stride(-1) == 1 else q.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    kt = k[:, :plan.q_end].transpose(1, 2).contiguous()  # [n_kv, d, q_end]: each dim's keys contiguous
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    with torch.profiler.record_function("chunkcache::sparse_attention_cpu"):  # visible to `bench rag --profile`
        rc = _cpu_entry(march)(q.data_ptr(), kt.data_ptr(), v.data_ptr(), out.data_ptr(), pos.data_ptr(), n_heads,
                               k.shape[0], m, d, plan.q_end, block_q, q.stride(0), q.stride(1), kt.stride(0),
                               kt.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1), scale,
                               torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"sparse_attention_f32 failed (code {rc}: 1 bad shapes, 2 head_dim, 3 out of memory)")
    return out


def sparse_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                           scale: float, *, impl: str | None = None, march: str = "native") -> torch.Tensor:
    """Run implementation `impl` (torch | cpp | triton; None: Triton on CUDA when triton imports, else torch);
    march: the C++ build that impl=cpp runs. The engine's choice of both comes from `AttentionDispatch`
    (measured on the machine under kernels=auto).

    A plan with a ContextTemper (APE) always takes the torch path `ape_attention_ref`; a causal square plan
    (every position a query) takes SDPA's fused causal kernel unless Triton is asked for."""
    if impl is None:
        impl = "triton" if want_triton(None, q, k, v) else "torch"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if plan.temper is not None:
        return ape_attention_ref(q, k, v, plan, scale, plan.temper)
    if impl == "triton" and want_triton(True, q, k, v):
        return sparse_query_attention_triton(q, k, v, plan, scale)
    if impl == "cpp" and not plan.causal_square:
        return sparse_query_attention_cpu(q, k, v, plan, scale, march=march)
    return sparse_query_attention_ref(q, k, v, plan, scale)
