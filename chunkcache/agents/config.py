"""Validated config of the KVCOMM anchor pool (how a turn is prefilled is a BlendConfig: blend/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class AnchorConfig:
    """KVCOMM anchor pool.

    max_anchors: anchors kept per placeholder; past it, the least-used of the oldest
        `prune_window` anchors is dropped.
    min_anchors: fewer matching anchors than this -> prefill densely and add an anchor.
    entropy_threshold: reuse only when the entropy (bits) of the match weights is at most
        entropy_threshold * log2(N) for N matching anchors; otherwise prefill densely, add an anchor.
    temperature: match weights are softmax(-distance / temperature).
    dtype: storage dtype of anchor bases and deltas (the estimate is computed in the model dtype).
    """

    max_anchors: int = 20
    prune_window: int = 5
    min_anchors: int = 2
    entropy_threshold: float = 0.3
    temperature: float = 0.001
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.max_anchors < 1:
            raise ValueError(f"max_anchors must be >= 1, got {self.max_anchors}")
        if not 1 <= self.prune_window <= self.max_anchors:
            raise ValueError(f"prune_window must be in [1, max_anchors={self.max_anchors}], got {self.prune_window}")
        if self.min_anchors < 1:
            raise ValueError(f"min_anchors must be >= 1, got {self.min_anchors}")
        if not 0.0 <= self.entropy_threshold <= 1.0:
            raise ValueError(f"entropy_threshold must be in [0, 1], got {self.entropy_threshold}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]
