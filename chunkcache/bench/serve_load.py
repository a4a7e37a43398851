"""The pure parts of `chunkcache bench serve`: the request sequence, the percentiles, the figures of a run,
the speedup over time windows and the targets of issue 20.

A request sequence is a list of `LoadRequest`s fixed by the seed: each draws `k` distinct passages from a shared
pool by a Zipf law over the pool's ranks (the ranking itself a seeded shuffle of the pool), in shuffled order,
plus a question. Every mode and setting replays the same list, so request i is the same prompt everywhere and
figures pair per request index.

A `Sample` is what the client measured of one request: times are seconds from the run's start (first send,
429 retries included), `itl` the gaps between consecutive token events.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from chunkcache.bench.musique import passage_text

TARGET_SPEEDUP = 3.0  # blend with batching vs one-at-a-time blend, and vs full, at TARGET_CLIENTS
TARGET_CLIENTS = 16
EARLY = (50, 100)  # request indices of the early speedup
LATE_FROM = 500  # the steady-state speedup is over request indices >= this
STEADY_TOLERANCE = 0.10  # the late speedup may fall at most this far below the early one


@dataclass(frozen=True)
class LoadRequest:
    """One request of the sequence: pool indices of its passages (in prompt order), their texts, the question."""

    passages: tuple[int, ...]
    chunks: tuple[str, ...]
    query: str


@dataclass
class Sample:
    """One answered request. start/first/end: seconds from the run's start; itl: token gaps (s)."""

    index: int
    start: float
    first: float
    end: float
    itl: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    retries: int = 0

    @property
    def ttft(self) -> float:
        return self.first - self.start


def passage_pool(examples: list[dict], limit: int | None = None) -> list[str]:
    """The distinct passages of the examples (title and text), in order of first appearance, the first `limit`."""
    seen: dict[str, None] = {}
    for ex in examples:
        for ctx in ex["ctxs"]:
            seen.setdefault(passage_text(ctx), None)
    pool = list(seen)
    return pool[:limit] if limit else pool


def zipf_weights(n: int, s: float) -> list[float]:
    """Unnormalised Zipf weights of ranks 1..n: 1 / rank**s."""
    if n < 1 or s < 0:
        raise ValueError(f"zipf needs n >= 1 and s >= 0, got n={n}, s={s}")
    return [1.0 / r**s for r in range(1, n + 1)]


def build_requests(pool: list[str], questions: list[str], n: int, k: int, zipf_s: float,
                   seed: int) -> list[LoadRequest]:
    """n requests of k distinct passages each, drawn by Zipf(zipf_s) over a seeded ranking of the pool."""
    if not 1 <= k <= len(pool):
        raise ValueError(f"--passages must be in [1, {len(pool)}] (the pool's size), got {k}")
    if n < 1 or not questions:
        raise ValueError(f"need at least one request and one question, got {n} and {len(questions)}")
    rng = random.Random(seed)
    ranking = list(range(len(pool)))
    rng.shuffle(ranking)  # ranking[r] = pool index of rank r + 1
    weights = zipf_weights(len(pool), zipf_s)
    out = []
    for _ in range(n):
        picked: list[int] = []
        while len(picked) < k:
            idx = ranking[rng.choices(range(len(pool)), weights)[0]]
            if idx not in picked:
                picked.append(idx)
        rng.shuffle(picked)
        out.append(LoadRequest(tuple(picked), tuple(pool[i] for i in picked), rng.choice(questions)))
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0 < q < 100), linear between closest ranks (statistics.quantiles, inclusive)."""
    if not 0 < q < 100:
        raise ValueError(f"percentile must be in (0, 100), got {q}")
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=1000, method="inclusive")  # cuts[j] = the (j+1)/10-th percentile
    return cuts[round(q * 10) - 1]


def _rate(samples: list[Sample]) -> float:
    span = max(s.end for s in samples) - min(s.start for s in samples)
    return len(samples) / span if span > 0 else float("inf")


def hit_rates(samples: list[Sample]) -> tuple[float, float]:
    """(reused prompt tokens / prompt tokens, chunk hits / (hits + misses)), summed over the samples. The server's
    reused_tokens include the KV of chunks it missed and computed alone for that request: the chunk hit rate is the
    store's; the token share is what the prompt did not prefill in place."""
    prompt = sum(s.stats.get("prompt_tokens", 0) for s in samples)
    hits = sum(s.stats.get("chunk_hits", 0) for s in samples)
    looked = hits + sum(s.stats.get("chunk_misses", 0) for s in samples)
    return (sum(s.stats.get("reused_tokens", 0) for s in samples) / prompt if prompt else 0.0,
            hits / looked if looked else 0.0)


def summarize(samples: list[Sample], wall_s: float) -> dict:
    """The figures of one run: throughput, TTFT and inter-token latency percentiles, hit rates."""
    ttft = [s.ttft for s in samples]
    itl = [g for s in samples for g in s.itl]
    tokens = sum(s.stats.get("generated_tokens", len(s.itl) + 1) for s in samples)
    reuse, chunk_hits = hit_rates(samples)
    row = {"n": len(samples), "wall_s": wall_s, "req_per_s": len(samples) / wall_s, "out_tok_per_s": tokens / wall_s,
           "hit_rate": reuse, "chunk_hit_rate": chunk_hits, "retries_429": sum(s.retries for s in samples)}
    for q in (50, 90, 99):
        row[f"ttft_p{q}_s"] = percentile(ttft, q)
        row[f"itl_p{q}_s"] = percentile(itl, q)
    return row


def windows(samples: list[Sample], full: list[Sample] | None, size: int) -> list[dict]:
    """Per window of `size` request indices: its throughput and median TTFT, its hit rate, and against the full
    run of the same load (when given): the median over the window of the paired full_ttft_i / ttft_i, and the
    ratio of the two windows' throughputs (requests / (last end - first start) of the window's requests)."""
    if size < 1:
        raise ValueError(f"--window must be >= 1, got {size}")
    by_index = {s.index: s for s in samples}
    ref = {s.index: s for s in full} if full is not None else {}
    out = []
    for start in range(0, max(by_index, default=-1) + 1, size):
        win = [by_index[i] for i in range(start, start + size) if i in by_index]
        if not win:
            continue
        pairs = [ref[s.index].ttft / s.ttft for s in win if s.index in ref and s.ttft > 0]
        ref_win = [ref[s.index] for s in win if s.index in ref]
        out.append({"start": start, "end": start + size, "n": len(win), "req_per_s": _rate(win),
                    "ttft_p50_s": statistics.median(s.ttft for s in win), "hit_rate": hit_rates(win)[0],
                    "ttft_speedup_vs_full": statistics.median(pairs) if pairs else None,
                    "throughput_vs_full": _rate(win) / _rate(ref_win) if ref_win else None})
    return out


def paired_speedup(samples: list[Sample], full: list[Sample], lo: int, hi: int | None = None) -> float | None:
    """Median of full_ttft_i / ttft_i over the request indices lo <= i < hi answered in both runs."""
    ref = {s.index: s for s in full}
    pairs = [ref[s.index].ttft / s.ttft for s in samples
             if lo <= s.index and (hi is None or s.index < hi) and s.index in ref and s.ttft > 0]
    return statistics.median(pairs) if pairs else None


def _row(rows: list[dict], mode: str, batching: bool, clients: int) -> dict | None:
    return next((r for r in rows if (r["mode"], r["batching"], r["clients"]) == (mode, batching, clients)), None)


def _ratio_target(name: str, num: dict | None, den: dict | None, clients: int) -> dict:
    if num is None or den is None:
        return {"target": name, "clients": clients, "met": None, "why": "not run (needs both rows)"}
    ratio = num["req_per_s"] / den["req_per_s"]
    return {"target": name, "clients": clients, "value": ratio, "goal": TARGET_SPEEDUP,
            "margin": ratio / TARGET_SPEEDUP - 1, "met": ratio >= TARGET_SPEEDUP}


def targets(rows: list[dict], samples: dict[tuple[str, bool, int], list[Sample]]) -> dict:
    """Issue 20's targets at TARGET_CLIENTS clients (else the largest client count run), each with its value, goal,
    relative margin (value / goal - 1; >= 0 is met) and `met`; `met` is None where the rows needed were not run.
    steady_state: the paired full/blend TTFT speedup over indices >= LATE_FROM against the one over EARLY; met when
    it is at least (1 - STEADY_TOLERANCE) times the early one (a rise is no collapse; `within_10pct` is two-sided)."""
    closed = [r["clients"] for r in rows if r["clients"] is not None]
    c = TARGET_CLIENTS if TARGET_CLIENTS in closed else max(closed, default=TARGET_CLIENTS)
    blend, full = _row(rows, "blend", True, c), _row(rows, "full", True, c)
    vs_full = _ratio_target("blend+batching req/s >= 3x full+batching", blend, full, c)
    if blend is not None and full is not None:
        vs_full["p99_ttft_s"] = {"blend": blend["ttft_p99_s"], "full": full["ttft_p99_s"]}
        vs_full["p99_ttft_no_worse"] = blend["ttft_p99_s"] <= full["ttft_p99_s"]
        vs_full["met"] = vs_full["met"] and vs_full["p99_ttft_no_worse"]
    out = {"clients": c,
           "batching_vs_one_at_a_time": _ratio_target("blend+batching req/s >= 3x blend one-at-a-time", blend,
                                                      _row(rows, "blend", False, c), c),
           "vs_full": vs_full}
    b, f = samples.get(("blend", True, c)), samples.get(("full", True, c))
    early = paired_speedup(b, f, *EARLY) if b and f else None
    late = paired_speedup(b, f, LATE_FROM) if b and f else None
    if early is None or late is None:
        out["steady_state"] = {"target": "speedup after request 500 within 10% of requests 50-100", "met": None,
                               "why": f"needs blend and full with batching at {c} clients and --requests > {LATE_FROM}"}
    else:
        ratio = late / early
        out["steady_state"] = {"target": "speedup after request 500 within 10% of requests 50-100", "clients": c,
                               "early_speedup": early, "late_speedup": late, "value": ratio,
                               "goal": 1 - STEADY_TOLERANCE, "margin": ratio / (1 - STEADY_TOLERANCE) - 1,
                               "met": ratio >= 1 - STEADY_TOLERANCE,
                               "within_10pct": abs(ratio - 1) <= STEADY_TOLERANCE}
    return out
