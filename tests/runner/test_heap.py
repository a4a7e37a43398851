"""heap_trimmer: glibc's malloc_trim where the C library has it."""

import ctypes
import ctypes.util

import torch

from chunkcache.runner.heap import heap_trimmer


def test_heap_trimmer_calls_glibc_malloc_trim():
    libc = ctypes.util.find_library("c")
    assert libc and hasattr(ctypes.CDLL(libc), "malloc_trim")  # glibc on this project's machines
    x = torch.empty(64 * 2**20, dtype=torch.uint8)  # 64 MiB freed just before the trim
    del x
    assert heap_trimmer()() in (0, 1)  # malloc_trim's own return value (1: memory released); the no-op gives None
