"""Argument types shared by the `chunkcache` commands and the benches they pass through to (argparse `type=`
callables). A value out of range is refused by argparse with the flag's name: "argument --reps: must be >= 1, got 0".
Torch-free."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An integer type refusing values below `low`."""
    def integer(text: str) -> int:  # named so argparse says "invalid integer value: 'x'"
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return integer


positive = at_least(1)
non_negative = at_least(0)


def positives(text: str) -> list[int]:
    """A comma list of integers >= 1, at least one."""
    values = [positive(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def byte_size(text: str) -> int:
    """1073741824, 1GiB, 512MB ... -> bytes (>= 1)."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        value = int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise argparse.ArgumentTypeError(f"a byte size such as 2GiB or 512MB, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 byte, got {text!r}")
    return value


def _unit_interval(text: str, what: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{what} must be in [0, 1], got {value}")
    return value


def ratio(text: str) -> float:
    return _unit_interval(text, "recompute ratio")


def probability(text: str) -> float:
    return _unit_interval(text, "probability")


def ratios(text: str) -> list[float]:
    return [ratio(r) for r in text.split(",") if r.strip()]
