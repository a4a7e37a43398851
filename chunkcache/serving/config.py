"""The scheduler's settings: how many sequences run at once, how much prefill a step may do, how much KV may be
in flight, and how many requests may wait."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True)
class SchedulerConfig:
    """max_batch: sequences prefilling or decoding at once (1: one request at a time, the old server).
    max_batch_tokens: prefill tokens a step computes (at least one slice of work runs per step); `full` and
        `prefix` prefills are sliced to this size so a long prompt does not stall the running sequences.
    kv_budget_bytes: KV of the admitted sequences (prompt + max new tokens each); admission waits beyond it.
    max_waiting: submitted requests (and exclusive calls) not yet admitted; one more raises QueueFull.
    """

    max_batch: int = 16
    max_batch_tokens: int = 512
    kv_budget_bytes: int = 2 * GiB
    max_waiting: int = 16

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_batch_tokens", "kv_budget_bytes", "max_waiting"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
