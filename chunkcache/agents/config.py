"""Validated configs of the anchor pool and of one agent prefill."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("dense", "prefix", "kvcomm", "blend", "kvcomm+blend")
DEVIATION_ON = ("k", "v", "kv")
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


@dataclass(frozen=True)
class AgentPrefillConfig:
    """How one agent turn's prompt is prefilled.

    mode: dense (full prefill, the reference) | prefix (longest token prefix shared with a recent
        prompt, vLLM-style) | kvcomm (anchor offset estimate) | blend (CacheBlend over the
        placeholders' base KV) | kvcomm+blend (anchor estimate, then CacheBlend recompute).
    recompute_ratio: blend modes: fraction of the placeholder and following-text tokens recomputed
        from the check layer on.
    check_layer: blend modes: layer where fresh and cached K/V are compared.
    """

    mode: str = "kvcomm"
    recompute_ratio: float = 0.15
    check_layer: int = 1
    deviation_on: str = "kv"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.recompute_ratio <= 1.0:
            raise ValueError(f"recompute_ratio must be in [0, 1], got {self.recompute_ratio}")
        if self.check_layer < 1:
            raise ValueError(f"check_layer must be >= 1, got {self.check_layer}")
        if self.deviation_on not in DEVIATION_ON:
            raise ValueError(f"deviation_on must be one of {DEVIATION_ON}, got {self.deviation_on!r}")

    @property
    def uses_anchors(self) -> bool:
        return self.mode in ("kvcomm", "kvcomm+blend")

    @property
    def blends(self) -> bool:
        return self.mode in ("blend", "kvcomm+blend")
