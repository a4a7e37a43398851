"""Dominance: at each TTFT speedup an anchor mode reaches, is the default's quality loss against full prefill at
most DOMINANCE times the anchor's? Shared by `bench rag` (KL only: it measures no answers) and `bench tasks`
(1 - agreement F1, and KL).

The default's loss at the anchor's speedup is read off the default's own Pareto points, linear in log speedup
between the two neighbouring points (`at_speedup`); None where the default has no point that fast or that slow.
"""

from __future__ import annotations

import math
from itertools import pairwise
from collections.abc import Callable, Mapping

DOMINANCE = 0.7  # issue 21's target: the default's loss <= 0.7x each anchor's at the anchor's TTFT
Loss = Callable[[dict], float]
LOSSES: dict[str, Loss] = {"disagreement": lambda r: 1.0 - r["agreement_f1"], "kl": lambda r: r["tf_kl_mean"]}
KL_ONLY: dict[str, Loss] = {"kl": LOSSES["kl"]}


def at_speedup(points: list[tuple[float, float]], x: float) -> float | None:
    """The value at TTFT speedup x on a curve of (speedup, value) points, linear in log speedup between the
    two neighbouring points; None where no point is that fast or that slow."""
    own = sorted(points)
    for (x0, k0), (x1, k1) in pairwise(own):
        if x0 <= x <= x1:
            w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) if x1 > x0 else 0.0
            return k0 + w * (k1 - k0)
    return None


def dominance(pareto: list[dict], default: str, losses: Mapping[str, Loss] = LOSSES) -> list[dict]:
    """For every other timed mode's Pareto point (rows with mode, ratio, ttft_speedup_vs_full_median and what
    `losses` read): per loss name, the anchor's loss, `default_<name>` (the default's at that speedup) and
    `<name>_ratio` (default / anchor; None where undefined), and met: every ratio <= DOMINANCE (None where one
    is undefined)."""
    own = [r for r in pareto if r["mode"] == default and r["ttft_speedup_vs_full_median"] is not None]
    rows = []
    for r in pareto:
        x = r["ttft_speedup_vs_full_median"]
        if r["mode"] in (default, "full") or x is None:
            continue
        row = {"mode": r["mode"], "ratio": r["ratio"], "ttft_speedup_vs_full_median": x}
        for name, loss in losses.items():
            at = at_speedup([(p["ttft_speedup_vs_full_median"], loss(p)) for p in own], x)
            row[name], row[f"default_{name}"] = loss(r), at
            row[f"{name}_ratio"] = at / loss(r) if at is not None and loss(r) > 0 else None
        ratios = [row[f"{name}_ratio"] for name in losses]
        row["met"] = None if None in ratios else all(q <= DOMINANCE for q in ratios)
        rows.append(row)
    return rows
