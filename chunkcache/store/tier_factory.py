"""Build tier storage objects from their TierConfig."""

from __future__ import annotations

import os

import torch

from chunkcache.store.config import TierConfig
from chunkcache.store.disk_tier import DiskTier
from chunkcache.store.memory_tier import MemoryTier
from chunkcache.store.tier import Tier


def build_tier(tc: TierConfig, cache_dir: str) -> Tier:
    if tc.kind in ("gpu", "cpu"):
        pin = tc.pin_memory if tc.pin_memory is not None else (tc.kind == "cpu" and torch.cuda.is_available())
        return MemoryTier(tc.kind, "cuda" if tc.kind == "gpu" else "cpu", pin_memory=pin)
    if tc.kind == "disk":
        return DiskTier(tc.path or os.path.join(cache_dir, "chunks"), codec=tc.codec, fsync=tc.fsync)
    from chunkcache.store.remote_tier import RemoteTier
    return RemoteTier(tc.url or "", key_prefix=tc.key_prefix, codec=tc.codec, ttl_s=tc.ttl_s,
                      timeout_s=tc.timeout_s, retry_after_s=tc.retry_after_s)
