"""Argument types shared by the `chunkcache` sub-commands (argparse `type=` callables)."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


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


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"recompute ratio must be in [0, 1], got {value}")
    return value


def ratios(text: str) -> list[float]:
    return [ratio(r) for r in text.split(",") if r.strip()]
