"""Argument types shared by the `chunkcache` sub-commands (argparse `type=` callables)."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"recompute ratio must be in [0, 1], got {value}")
    return value


def ratios(text: str) -> list[float]:
    return [ratio(r) for r in text.split(",") if r.strip()]
