"""Hand freed heap back to the OS between requests.

Every request allocates and frees hundreds of MB of KV in varied sizes; with glibc's dynamic mmap
threshold those buffers come from the heap, which fragments, so a long-running process's RSS creeps
up although the store stays within its budgets. `malloc_trim(0)` returns the free pages. Callers run
it off the request's critical path: the API worker when its queue runs empty, the agents runtime
after each turn's decode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def heap_trimmer() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op where the C library has none."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim is not None else (lambda: None)
