"""heap_trimmer: glibc's malloc_trim gives back heap pages that free() alone keeps.

The heap is made the way requests make it: many blocks below the mmap threshold, freed while a later block
still pins the top of the heap, so glibc cannot shrink it and the process's RSS stays up. The trim must
bring RSS down by most of what was freed (a no-op trimmer, or one that trims nothing, leaves it).
"""

import ctypes
import ctypes.util

import psutil

from chunkcache.runner.heap import heap_trimmer

BLOCK = 4096  # far below glibc's mmap threshold: served from the heap
COUNT = 32_768  # 128 MiB


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return libc


def test_heap_trimmer_returns_freed_heap_pages_to_the_os():
    libc, proc = _libc(), psutil.Process()
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    for b in blocks:
        libc.memset(b, 1, BLOCK)  # touched: resident
    pin = libc.malloc(BLOCK)  # above them on the heap: free() cannot shrink the heap past it
    try:
        for b in blocks:
            libc.free(b)
        freed = proc.memory_info().rss
        heap_trimmer()()
        trimmed = proc.memory_info().rss
    finally:
        libc.free(pin)
    assert freed - trimmed > 0.75 * BLOCK * COUNT, (freed >> 20, trimmed >> 20)


def test_heap_trimmer_is_a_no_op_without_malloc_trim(monkeypatch):
    import chunkcache.runner.heap as heap

    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: None)  # a C library without it
    assert heap.heap_trimmer()() is None
