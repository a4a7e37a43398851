"""Kernel tests run the Triton kernels on the CPU interpreter: set it before triton is imported.

The kernels jit lazily (chunkcache.kernels._triton.lazy_jit), so the mode is read at first launch.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
