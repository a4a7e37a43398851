"""Which context tokens each blending mode recomputes: one selection interface for every mode.

Every recomputing mode is a selector: it looks at the request (and, if query-aware, at the naive
merged cache) and returns a `Selection`, which Blender._blend hands to the one recompute loop in
blend/recompute.py. Candidates are the context tokens after the exactly placed prefix, indexed
0..n_cand-1 in position order.

  cacheblend  CacheBlend / LMCache: deviation of fresh vs cached K/V at the check layer(s), top ratio
              (cfg.selection swaps the score: random, attention, attention x deviation).
  adaptive    as cacheblend, the count from the deviation mass, capped by the ratio.
  epic        EPIC / LegoLink (arXiv 2410.15332): the first k tokens of every chunk, fixed before layer 0.
              Under KVCOMM (kvcomm+epic) a segment placed from an anchor estimate already carries its
              measured offset, so only its first `sink_tokens` are recomputed; chunk-path segments get k.
  ape         APE (arXiv 2502.05431): nothing recomputed; the suffix attends to the contexts with
              temperature T and scaling factor S (kernels/ape_attention.py).
  query       A3-style query-aware selection: the suffix's attention over the naive cache, top ratio.
  prophet     ProphetKV (arXiv 2602.02579) as far as published: the suffix's attention over the naive
              cache, normalised per layer and fused across layers by the max, top ratio.
  prophet2    ProphetKV with a second stage: half the budget as prophet picks it, recomputed (stage 1); then the
              question's attention again, over the cache stage 1 repaired, picks the other half (stage 2).
  qcfuse      QCFuse (arXiv 2606.05875): the question, run over a compressed view (each chunk's anchor tokens),
              scores every context token at a few profiled critical layers only (blend/qcfuse.py); top ratio.
  fusion      FusionRAG (arXiv 2601.12904): chunk KV precomputed behind its top-n embedding neighbours' text
              (BlendRequest.fused, blend/fusion.py), then the tokens the question attends most, top ratio.
  fusionqc    fusion's fused entries with blend's chunk heads (half the budget) and, for the rest, qcfuse's
              selection (the question over each chunk's anchor tokens at the critical layers only): FusionRAG's
              repaired entries at QCFuse's cost of selection. The default mode. (Until 2026-12-05 it was
              qcfuse's selection alone; the heads measured level on dev agreement, lower KL and up to 1.10x
              faster at the same ratio, because the question's picks sit late in the prompt; BENCHMARKS.md.)
  blend       chunkcache's own (what fusion and fusionqc run without fused contexts): half the budget as the first
              tokens of every chunk (EPIC's sink fix, spread evenly over the chunks), the other half the
              tokens the suffix attends most over the naive cache (A3 / ProphetKV's insight); all chosen
              before layer 0, so, unlike cacheblend, no layer runs over every context token. (Until
              2026-12-01 blend was the sinks plus deviation x attention at the check layer, i.e.
              cacheblend's attention_deviation selection with pinned sinks: the measured rule here reached
              the same KL 20% faster; BENCHMARKS.md.)
With the budget covering every candidate (ratio 1.0; epic with k >= chunk length) all are recomputed.

Guessed or left out (the papers' text available here did not settle it):
  - epic: k = 16 (the paper's range is k <= 32); its own TTFT model is not reproduced, only its rule.
  - ape: T = S = 0.9 is the APE repository's default, not tuned for this model. The paper encodes every
    context at the same positions after the shared prefix and puts the query after the longest one;
    here chunks keep their sequential positions (so T = S = 1 is exactly naive). Only the prompt's
    question is tempered: generated tokens attend normally (decode has no hook).
  - prophet: the published abstract gives "query-driven selection, a dual-stage recomputation pipeline
    fusing layer-wise attention". Implemented: the question's attention over the naive cache, each
    layer's share normalised, fused by the max over layers, top ratio. Left out: the second stage
    (a refinement pass after the first recompute) and any per-layer budget, whose details were not
    available.
  - prophet2: the paper's text was not available here either. Its second stage is read as a refinement after the
    first recompute: the budget split in half (PROPHET_STAGE1_SHARE), stage 2 scored by the same max-fused
    attention, now over the repaired cache, the stage-1 tokens excluded. (QCFuse's release reproduces ProphetKV
    as one selection: the question over the whole cached context at every layer, per-layer shares averaged, top
    ratio, recomputed; under that reading `prophet` is already both stages, fused by the max instead of the mean.)
  - qcfuse, fusion: see blend/qcfuse.py and blend/fusion.py.
  - fusionqc: each chunk's anchors are chosen over its fused entry (the KV placed), computed when the entry is
    ingested and remembered per entry, in the store's catalog where there is one (blend/anchor_memo.py); the
    critical layers are the model's qcfuse profile (measured over plain entries; profiled over fused ones it
    picks the same layers, BENCHMARKS.md). Its fallback without fused contexts is blend, not qcfuse: the two
    tie on HotpotQA test (200 examples) and blend leads on MuSiQue test (agreement 0.744 against 0.665;
    BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chunkcache.blend.anchor_memo import AnchorMemo
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.probe import suffix_attention_by_layer
from chunkcache.blend.qcfuse import critical_layers, view_importance
from chunkcache.blend.recompute import selective_recompute
from chunkcache.blend.request import BlendRequest
from chunkcache.blend.selection import adaptive_count, random_tokens, top_tokens
from chunkcache.kernels.ape_attention import ContextTemper
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@dataclass(frozen=True)
class Candidates:
    """What a selector sees. ids [n]: the prompt; placed: positions before it are exact (not candidates);
    fresh: positions from it on are computed in full (the suffix, or from a placeholder KVCOMM rejected);
    budget: context tokens the mode may recompute; load_all(): load every layer of the placed chunk KV;
    entries: per placed chunk index, what its KV was computed behind (the precompute context's token ids, or
    ("response",)): with the chunk's tokens it determines that KV (qcfuse's anchors are remembered by it in
    anchor_memo); profile_root: where this model's profiled critical layers are read (None: the default root)."""

    runner: ModelRunner
    cache: KVCache
    ids: torch.Tensor
    req: BlendRequest
    cfg: BlendConfig
    placed: int
    fresh: int
    budget: int
    load_all: Callable[[], None]
    anchored: frozenset[int] = frozenset()  # chunk indices placed from a KVCOMM anchor estimate
    load_to: Callable[[int], None] | None = None  # load layers 0..l of the placed chunk KV (None: load_all)
    entries: Mapping[int, tuple] = field(default_factory=dict)
    anchor_memo: AnchorMemo = field(default_factory=AnchorMemo)  # qcfuse's anchors per entry (the engine's)
    profile_root: Path | None = None

    @property
    def count(self) -> int:
        return self.fresh - self.placed

    def chunk_spans(self) -> list[tuple[int, int, int]]:
        """(chunk index, start, end) in candidate indices of every chunk that is a candidate."""
        spans = enumerate(zip(self.req.chunks, self.req.chunk_offsets, strict=True))
        return [(i, off - self.placed, off - self.placed + len(c)) for i, (c, off) in spans
                if self.placed <= off < self.fresh]

    def heads(self, k: int, k_anchored: int | None = None) -> torch.Tensor:
        """Candidate indices [m] of the first k tokens of every candidate chunk (k_anchored of those in
        `anchored`, when given), increasing."""
        dev = self.runner.device
        idx = [torch.arange(s, min(e, s + (k_anchored if k_anchored is not None and i in self.anchored else k)),
                            device=dev) for i, s, e in self.chunk_spans()]
        return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64, device=dev)

    def load(self, layer: int) -> None:
        """Make layers 0..layer of the placed chunk KV present in the cache."""
        (self.load_to or (lambda _: self.load_all()))(layer)

    def suffix_attention(self, depth: int | None = None) -> torch.Tensor:
        """Attention [depth, n_cand] of the suffix over the naive merged cache, per layer 0..depth-1 (default:
        every layer); only those layers are loaded first, the rest keep loading under the recompute."""
        depth = self.runner.n_layers if depth is None else depth
        self.load(depth - 1)
        mass = suffix_attention_by_layer(self.runner, self.cache, self.ids[self.fresh:], depth)
        return mass[:, self.placed:]


@dataclass(frozen=True)
class Selection:
    """keep [k]: candidates fixed before layer 0 (None: decided at the check layers); checks: layers where
    deviation narrows the candidates; pinned [n_cand] bool: kept at every check; weights [n] by position:
    multiply the deviation; temper: APE attention for the suffix; done [d]: candidates the selector already
    recomputed itself (a multi-stage mode; counted as recomputed). Selection() recomputes every candidate."""

    keep: torch.Tensor | None = None
    checks: tuple[int, ...] = ()
    pinned: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    temper: ContextTemper | None = None
    done: torch.Tensor | None = None


def _cacheblend(c: Candidates) -> Selection:
    cfg = c.cfg
    if cfg.selection == "random":
        return Selection(keep=random_tokens(c.count, c.budget, cfg.seed, device=c.runner.device))
    if cfg.selection == "deviation":
        return Selection(checks=cfg.check_layers)
    importance = c.suffix_attention().sum(0)  # [n_cand]
    if cfg.selection == "attention":
        count = c.budget if cfg.mode != "adaptive" else min(c.budget, adaptive_count(importance, cfg.adaptive_mass))
        return Selection(keep=top_tokens(importance, count))
    weights = torch.nn.functional.pad(importance, (c.placed, c.ids.numel() - c.fresh))  # [n]
    return Selection(checks=cfg.check_layers, weights=weights)


def _epic(c: Candidates) -> Selection:
    k = c.cfg.epic_k or max(1, round(c.budget / max(1, len(c.chunk_spans()))))
    return Selection(keep=c.heads(k, min(k, c.cfg.sink_tokens) if c.cfg.kvcomm else None))


def _ape(c: Candidates) -> Selection:
    temper = ContextTemper(len(c.req.prefix_ids), c.fresh, c.cfg.ape_temperature, c.cfg.ape_scale)
    return Selection(keep=torch.zeros(0, dtype=torch.int64, device=c.runner.device), temper=temper)


def _query(c: Candidates) -> Selection:
    return Selection(keep=top_tokens(c.suffix_attention().sum(0), c.budget))


def _prophet(c: Candidates) -> Selection:
    return Selection(keep=top_tokens(_prophet_fused(c.suffix_attention()), c.budget))


PROPHET_STAGE1_SHARE = 0.5  # prophet2: share of the budget chosen and recomputed in stage 1 (guessed)


def _prophet_fused(mass: torch.Tensor) -> torch.Tensor:
    """ProphetKV's layer fusion of mass [n_layers, n_cand]: each layer's share, the best layer's."""
    return (mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)).amax(0)


def _prophet2(c: Candidates) -> Selection:
    """Stage 1 recomputes the first half of the budget (with the suffix, every layer) into the cache; stage 2
    probes the suffix again over that cache and returns the rest for the blender's recompute."""
    first = top_tokens(_prophet_fused(c.suffix_attention()), round(c.budget * PROPHET_STAGE1_SHARE))
    positions = torch.cat((c.placed + first, torch.arange(c.fresh, c.ids.numel(), device=c.runner.device)))
    selective_recompute(c.runner, c.cache, c.ids, positions, first.numel(), first.numel(), ())
    c.cache.truncate(c.fresh)
    mass = suffix_attention_by_layer(c.runner, c.cache, c.ids[c.fresh:])[:, c.placed:]  # [n_layers, n_cand]
    fused = _prophet_fused(mass)
    fused[first] = float("-inf")
    return Selection(keep=top_tokens(fused, c.budget - first.numel()), done=first)


def qcfuse_importance(c: Candidates) -> torch.Tensor:
    """qcfuse's score [n_cand]: the question's attention through the compressed view, averaged over the critical
    layers."""
    cfg, r = c.cfg, c.runner
    layers = critical_layers(r, cfg.critical_layers, c.profile_root)
    last = max(layers)
    c.load(last)  # only the layers up to the last critical one: the rest keep loading under the recompute
    cand = c.chunk_spans()
    spans = [(c.placed + s, c.placed + e) for _, s, e in cand]
    sink_ids = tuple(c.req.token_ids()[:min(cfg.anchor_sinks, c.placed)])  # host ids: no device sync
    anchors = [c.anchor_memo.get(r, c.cache, sink_ids, c.entries.get(i, ()), c.req.chunks[i], s, last,
                                 cfg.anchor_ratio, cfg.anchor_sinks)
               for (i, _, _), (s, _) in zip(cand, spans, strict=True)]
    return view_importance(r, c.cache, c.ids[c.fresh:], c.placed, c.fresh, spans, anchors, layers).mean(0)


def _qcfuse(c: Candidates) -> Selection:
    return Selection(keep=top_tokens(qcfuse_importance(c), c.budget))


BLEND_HEAD_SHARE = 0.5  # blend: share of the budget spent on chunk heads (measured on dev examples 0-5)


def blend_heads(c: Candidates) -> torch.Tensor:
    """blend's chunk heads: the first k tokens of every candidate chunk, k = BLEND_HEAD_SHARE of the budget
    spread over the chunks (at least 1); an anchor-placed segment (KVCOMM) gets at most sink_tokens."""
    k = max(1, round(c.budget * BLEND_HEAD_SHARE / max(1, len(c.chunk_spans()))))
    return c.heads(k, min(k, c.cfg.sink_tokens) if c.cfg.kvcomm else None)


def heads_then(c: Candidates, score: torch.Tensor) -> Selection:
    """blend's chunk heads, then the candidates `score` [n_cand] ranks highest, up to the budget (score is
    overwritten at the heads)."""
    score[blend_heads(c)] = float("inf")
    return Selection(keep=top_tokens(score, c.budget))


def _fusionqc(c: Candidates) -> Selection:
    return heads_then(c, qcfuse_importance(c))


def _blend(c: Candidates) -> Selection:
    """The chunk heads, then the tokens the suffix attends most over the naive cache (summed over layers) up to
    the budget; fixed before layer 0. What measured best at equal TTFT (README "Modes", BENCHMARKS.md)."""
    layers = c.cfg.score_layers or tuple(range(c.runner.n_layers))
    if layers[-1] >= c.runner.n_layers:
        raise ValueError(f"score_layers {layers} out of range for a model of {c.runner.n_layers} layers")
    return heads_then(c, c.suffix_attention(layers[-1] + 1)[list(layers)].sum(0))


SELECTORS: dict[str, Callable[[Candidates], Selection]] = {
    "cacheblend": _cacheblend, "adaptive": _cacheblend, "epic": _epic, "ape": _ape, "query": _query,
    "prophet": _prophet, "prophet2": _prophet2, "qcfuse": _qcfuse, "fusion": _query,
    "fusionqc": _fusionqc, "blend": _blend,
}
FULL_BUDGET_EXEMPT = ("epic", "ape")  # modes whose own rule, not the ratio, sets what is recomputed
QUESTION_SCORED = ("query", "prophet", "prophet2", "qcfuse", "fusion", "fusionqc", "blend")  # by the question


def select(c: Candidates) -> Selection:
    """The selection of c.cfg.mode; every candidate when the ratio's budget covers them all, none (without the
    question's scoring pass, whose result could pick nothing) when a question-scored mode's budget is 0."""
    if c.cfg.mode not in FULL_BUDGET_EXEMPT and c.budget >= c.count:
        return Selection()
    if c.budget == 0 and c.cfg.mode in QUESTION_SCORED:
        return Selection(keep=torch.zeros(0, dtype=torch.int64, device=c.runner.device))
    return SELECTORS[c.cfg.mode](c)
