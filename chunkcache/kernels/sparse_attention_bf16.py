"""Sparse-query attention with bf16 products on the CPU: the C++ kernel's AVX512-BF16 variant.

Same semantics as `sparse_query_attention_ref` (kernels/sparse_attention.py): queries at sorted positions
attend causally to a merged fp32 cache. Both products run on bf16 dot-product instructions (VDPBF16PS):
the queries are rounded to bf16 after scaling by scale * log2(e), the keys and values when packed here,
the probabilities after the fp32 online softmax; every sum accumulates in fp32. On a CPU with AVX512-BF16
the products run about twice as fast as fp32 FMAs (BENCHMARKS.md); the output moves by about bf16's
rounding (relative error 2.4e-3 against fp32 attention on MuSiQue's shape, 2.2e-3 of it from the bf16 operands).

`sparse_query_attention_bf16_ref` is the torch reference with the same signature: the fp32 reference on
the bf16-rounded queries, keys and values (the probabilities' rounding is the kernel's only extra error).
The kernel exists in the `-march` builds that enable AVX512-BF16 (native on such a CPU); elsewhere
`bf16_kernel_available` is False and callers keep fp32 attention.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Any

import torch

from chunkcache.kernels._cpp import load
from chunkcache.kernels.sparse_attention import (CPU_HEAD_DIMS, AttentionPlan, _check, _check_positions,
                                                 sparse_query_attention_ref)

KEY_TILE = 128  # the kernel's keys per tile (BK): packed keys are padded to a multiple of it
LOG2E = 1.4426950408889634


@functools.cache
def _bf16_entry(march: str = "native") -> Any:
    """The bf16 entry point of the C++ build for `march`, or None when unbuilt or built without AVX512-BF16."""
    lib = load("sparse_attention_cpu", march)
    if lib is None or not lib.sparse_attention_bf16_available():
        return None
    fn = lib.sparse_attention_bf16
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 11 + [ctypes.c_float, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def bf16_kernel_available(march: str = "native") -> bool:
    """Whether the C++ build for `march` has the bf16 variant (this CPU and compiler support AVX512-BF16)."""
    return _bf16_entry(march) is not None


def pack_kv_bf16(k: torch.Tensor, v: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """k, v [n_kv, >= kv_len, d] fp32 -> kp [n_kv, d/2, kv_pad, 2], vp [n_kv, kv_pad/2, d, 2] bf16 (keys past
    kv_len zero), kv_pad: kv_len rounded up to whole key tiles."""
    n_kv, _, d = k.shape
    kv_pad = math.ceil(kv_len / KEY_TILE) * KEY_TILE
    pairs = k[:, :kv_len].to(torch.bfloat16).view(torch.int32)  # [n_kv, kv_len, d/2]: a dim pair per int32
    kp = torch.empty(n_kv, d // 2, kv_pad, dtype=torch.int32, device=k.device)
    kp[:, :, :kv_len] = pairs.transpose(1, 2)  # [n_kv, d/2, kv_len]
    kp[:, :, kv_len:] = 0
    vb = v[:, :kv_len].to(torch.bfloat16)  # [n_kv, kv_len, d]
    vp = torch.empty(n_kv, kv_pad // 2, d, 2, dtype=torch.bfloat16, device=v.device)
    vp[:, :(kv_len + 1) // 2, :, 0] = vb[:, 0::2]  # even keys
    vp[:, :kv_len // 2, :, 1] = vb[:, 1::2]  # odd keys
    vp[:, (kv_len + 1) // 2:, :, 0] = 0  # the padding (an odd kv_len's last pair has a zero key)
    vp[:, kv_len // 2:, :, 1] = 0
    kp = kp.view(torch.bfloat16).view(n_kv, d // 2, kv_pad, 2)  # [n_kv, d/2, kv_pad, 2]
    return kp, vp, kv_pad


def sparse_query_attention_bf16_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                                    scale: float, block_q: int = 32, march: str = "native") -> torch.Tensor:
    """q [n_heads, m, d], k, v [n_kv, >= plan.kv_len, d] fp32 on the CPU, head_dim 64 or 128 -> [n_heads, m, d]
    fp32, with bf16 products (module docstring). block_q: queries per task; march: the C++ build."""
    _check(q, k, v, plan)
    fn = _bf16_entry(march)
    if fn is None or q.device.type != "cpu" or q.dtype != torch.float32 or q.shape[-1] not in CPU_HEAD_DIMS:
        raise ValueError(f"the bf16 kernel takes fp32 CPU tensors with head_dim in {CPU_HEAD_DIMS} on a build with "
                         f"AVX512-BF16 (got {q.dtype} on {q.device}, head_dim {q.shape[-1]}; "
                         f"available: {fn is not None})")
    n_heads, m, d = q.shape
    pos = plan.q_positions.contiguous()
    _check_positions(pos, m, plan.q_end, k.shape[1])
    q = q if q.stride(-1) == 1 else q.contiguous()
    kp, vp, kv_pad = pack_kv_bf16(k, v, plan.q_end)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    with torch.profiler.record_function("chunkcache::sparse_attention_bf16"):
        rc = fn(q.data_ptr(), kp.data_ptr(), vp.data_ptr(), out.data_ptr(), pos.data_ptr(), n_heads, k.shape[0], m,
                d, plan.q_end, kv_pad, block_q, q.stride(0), q.stride(1), out.stride(0), out.stride(1), scale,
                torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"sparse_attention_bf16 failed (code {rc}: 1 bad shapes, 2 head_dim, 3 out of memory, "
                           "4 built without bf16)")
    return out


def sparse_query_attention_bf16_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                                    scale: float, block_q: int = 32, march: str = "native") -> torch.Tensor:
    """Torch reference of `sparse_query_attention_bf16_cpu` (same signature; block_q and march unused): fp32
    attention over the queries (scaled by scale * log2 e), keys and values rounded to bf16 as the kernel rounds
    them."""
    del block_q, march
    q2 = (q * (scale * LOG2E)).to(torch.bfloat16).float()  # the kernel's rounded, pre-scaled queries
    rounded = [t.to(torch.bfloat16).float() for t in (k, v)]
    return sparse_query_attention_ref(q2, *rounded, plan, 1 / LOG2E)
