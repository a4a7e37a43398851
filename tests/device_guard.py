"""A TorchFunctionMode that fails tensor factories called without an explicit device.

Used on the CPU to catch request-path code that would build tensors on the CPU while the model
runs on CUDA (positions, indices, masks). `*_like` factories and `.new_*` take the source tensor's
device and are allowed.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode

FACTORIES = frozenset({torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.as_tensor,
                       torch.randperm, torch.linspace, torch.rand, torch.randn, torch.randint, torch.eye})


class ImplicitDeviceError(AssertionError):
    pass


class RequireDevice(TorchFunctionMode):
    """While active, a factory in FACTORIES without `device=` raises ImplicitDeviceError."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            raise ImplicitDeviceError(f"torch.{func.__name__} called without device=")
        return func(*args, **kwargs)


@contextlib.contextmanager
def require_device():
    with RequireDevice():
        yield


@pytest.fixture
def device_guard():
    """Use as `with device_guard(): ...` around request-path calls."""
    return require_device
