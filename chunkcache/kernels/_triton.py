"""Optional Triton: availability, the dispatch rule shared by every kernel module, lazy JIT.

Triton is never imported until a kernel is launched, so the torch (CPU) path works without it.
Triton decides at `triton.jit` time whether a kernel is compiled or run by the CPU interpreter
(TRITON_INTERPRET=1), and fixes that mode for its own standard library when triton.language is
first imported; `lazy_jit` therefore jits on first launch, and TRITON_INTERPRET must be set before
the first launch in a process (one process cannot both interpret and compile).
Kernel bodies are plain functions in their op's module; their annotations are strings
(`from __future__ import annotations`) and the names `tl` / `triton` are bound in that module's
globals by `lazy_jit` before the first compile.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable

import torch


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package can be imported (checked once, without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None (import blocked)
        return False


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_choice(use_triton: bool | None) -> str:
    """use_triton as a choice: None -> auto; True -> triton; False -> torch. The environment is read once, by the
    configuration (CHUNKCACHE_KERNELS -> EngineConfig.kernels), never here: an explicit choice always wins."""
    if use_triton is None:
        return "auto"
    return "triton" if use_triton else "torch"


def want_triton(use_triton: bool | None, *tensors: torch.Tensor) -> bool:
    """Dispatch rule: None (auto) = Triton iff every tensor is on CUDA and triton imports; True forces Triton,
    False the torch path.

    Forcing Triton on CPU tensors needs TRITON_INTERPRET=1 (the tests set it).
    """
    choice = kernel_choice(use_triton)
    if choice == "auto":
        return triton_available() and all(t.is_cuda for t in tensors)
    if choice == "torch":
        return False
    if not triton_available():
        raise RuntimeError("use_triton=True but the triton package is not installed")
    if not interpreting() and not all(t.is_cuda for t in tensors):
        raise RuntimeError("use_triton=True on CPU tensors needs TRITON_INTERPRET=1 (the Triton CPU interpreter)")
    return True


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1) (tl.arange sizes must be powers of two)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division for launch grids."""
    return -(-a // b)


class lazy_jit:
    """Holds a Triton kernel body; `kernel[grid](...)` jits it on first use for the current mode."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._jitted: dict[bool, Any] = {}
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        mode = interpreting()
        kernel = self._jitted.get(mode)
        if kernel is None:
            import triton
            import triton.language as tl

            self.fn.__globals__["triton"] = triton
            self.fn.__globals__["tl"] = tl
            kernel = self._jitted[mode] = triton.jit(self.fn)
        return kernel[grid]
