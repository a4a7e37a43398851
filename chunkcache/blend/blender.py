"""The one prefill path: place every cached segment of a request, recompute what the mode selects.

A request is [exact prefix][chunks...][suffix] (blend/request.py); chunks may be RAG passages, agent
placeholders (anchored, KVCOMM) and the literal text between them. Modes (BlendConfig.mode):
  full        every token computed (the reference);
  prefix      exact prefix reuse only: the longest exactly known prefix (the request's prefix, plus the first
              chunk when it was precomputed behind exactly this prefix, or the longest token prefix shared
              with a recent prompt when the blender keeps a prefix cache); everything after is computed;
  naive       all chunk KV placed, only the suffix computed;
  cacheblend  layers before the first check layer computed for every context token; at each check
              layer fresh K/V of the computed tokens are compared with the cached ones and the set is
              narrowed, down to recompute_ratio * context tokens; their fresh K/V overwrite the cache;
  adaptive    as cacheblend, the count chosen per request from the deviation mass (capped by the ratio);
  epic, ape, query, prophet, prophet2, qcfuse, fusion, fusionqc, blend: the published successors and
              chunkcache's own, each a selector in blend/modes.py feeding the same recompute loop.
With cfg.kvcomm the anchored placeholders are first placed from the KVCOMM anchor estimate
(blend/anchoring.py); a rejected one makes the prompt from there on fresh (computed) and becomes an anchor.
The suffix (and any fresh region) is computed in every mode. With cfg.calibrated the ratio is the one stored for
this model by `chunkcache calibrate` (blend/model_profile.py). The fused modes (fusion, fusionqc) place each
candidate chunk's entry precomputed behind its fused context (req.fused) instead of the plain one; a request
without fused contexts runs UNFUSED_MODE (blend) instead, and its stats say so (mode, fallbacks). With
cfg.decode_correction or cfg.decode_correction_steps (every mode that places KV) the result carries a
DecodeCorrection (runner/decode.py): decode recomputes every position after the exact prefix, K per step in position
order (K = ceil(pending / S) with steps S), then the tokens generated so far, after which the cache is full prefill's.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from chunkcache.blend.anchor_memo import AnchorMemo
from chunkcache.blend.anchoring import AnchorIndex, Placement, measure, place_anchored
from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.blend.config import FUSED_MODES, BlendConfig
from chunkcache.blend.layer_loader import LayerLoader
from chunkcache.blend.model_profile import calibrated_ratio
from chunkcache.blend.modes import Candidates, select
from chunkcache.blend.prefix_cache import PrefixCache
from chunkcache.blend.recompute import selective_recompute
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.decode import DecodeCorrection
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@dataclass
class BlendStats:
    mode: str
    prompt_tokens: int
    context_tokens: int
    recomputed_tokens: int = 0  # context tokens recomputed past the first check layer (fresh region excluded)
    reused_tokens: int = 0  # prompt tokens whose KV came from cache at layers >= 1
    chunk_hits: int = 0
    chunk_misses: int = 0
    anchors_hit: int = 0  # kvcomm: placeholders placed from an anchor estimate
    anchors_added: int = 0  # kvcomm: placeholders computed and measured as anchors
    dense_fallback: bool = False  # kvcomm: the prompt was computed from a rejected placeholder on
    slots: list[dict] = field(default_factory=list)  # per placeholder: base origin, decision, anchors, reason
    fallbacks: list[str] = field(default_factory=list)
    decode_pending: int = 0  # prompt tokens decode recomputes (cfg.corrects): all after the exact prefix
    attention: str = ""  # the attention implementation of the recompute pass (torch | cpp | triton)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (place, load, recompute, ...)
    ttft_s: float = 0.0  # set by callers that time the prefill

    @property
    def recompute_fraction(self) -> float:
        return self.recomputed_tokens / max(1, self.context_tokens)

    @property
    def reuse_rate(self) -> float:
        return self.reused_tokens / max(1, self.prompt_tokens)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["recompute_fraction"] = self.recompute_fraction
        d["reuse_rate"] = self.reuse_rate
        return d


@dataclass
class BlendResult:
    cache: KVCache  # merged KV of the whole prompt, positions 0..prompt_tokens-1
    logits: torch.Tensor  # [vocab] fp32, next-token logits after the prompt
    stats: BlendStats
    correction: DecodeCorrection | None = None  # what decode recomputes (cfg.corrects)


PrefillSteps = Generator[int, None, BlendResult]  # yields tokens computed per piece of work; returns the result


def run_steps(steps: PrefillSteps) -> BlendResult:
    """Run a prefill generator to its end and return its BlendResult."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class Blender:
    """anchors: the KVCOMM anchor pool (needed by kvcomm modes on requests with placeholders); prefix_cache:
    recent prompts for prefix mode (None: the request's exact prefix only); anchor_memo: qcfuse's per-chunk
    anchors, remembered across requests (the engine's, warmed at ingestion; default: this blender's own);
    profile_root: where this model's calibrated ratios and critical layers are read (EngineConfig.profile_root;
    None: the default cache dir's `profiles`)."""

    def __init__(self, runner: ModelRunner, source: ChunkSource, anchors: AnchorIndex | None = None,
                 prefix_cache: PrefixCache | None = None, anchor_memo: AnchorMemo | None = None,
                 profile_root: Path | None = None) -> None:
        self.runner = runner
        self.source = source
        self.anchors = anchors
        self.prefix_cache = prefix_cache
        self.anchor_memo = anchor_memo if anchor_memo is not None else AnchorMemo()
        self.profile_root = profile_root

    def with_calibrated_ratio(self, req: BlendRequest, cfg: BlendConfig) -> BlendConfig:
        """cfg with `calibrated` resolved (cfg itself when not asked): the ratio `chunkcache calibrate` stored under
        profile_root for the mode that runs req (req.runs) with cfg's decode correction, and calibrated=False;
        ValueError naming the fix when none is stored."""
        if not cfg.calibrated:
            return cfg
        ratio = calibrated_ratio(self.runner.fingerprint, self.profile_root, req.runs(cfg.mode), cfg.decode_correction,
                                 cfg.decode_correction_steps)
        return replace(cfg, recompute_ratio=ratio, calibrated=False)

    def prefill(self, req: BlendRequest, cfg: BlendConfig, reserve: int = 0) -> BlendResult:
        """Run the prompt and return the merged cache and last-token logits. reserve: extra capacity for decode."""
        return run_steps(self.prefill_steps(req, cfg, reserve))

    def prefill_steps(self, req: BlendRequest, cfg: BlendConfig, reserve: int = 0,
                      slice_tokens: int = 0) -> PrefillSteps:
        """`prefill` as a generator that yields the number of tokens each piece of work computed and returns the
        BlendResult. With slice_tokens > 0 the computed tokens of `full` and `prefix` mode run in slices of at
        most slice_tokens (`runner.extend` appends at cache.length), one per `next()`, so a caller can run other
        work between them; the selective modes need the whole request at their check layers and run in one
        piece. slice_tokens=0: one piece (the plain `prefill`)."""
        with torch.inference_mode():
            prepared = self._start(req, cfg, reserve)
        if isinstance(prepared, BlendResult):  # placed and computed in one piece (the selective modes)
            yield prepared.stats.prompt_tokens - prepared.stats.reused_tokens
            return prepared
        ids, cache, placed, stats = prepared
        hidden = None
        step = slice_tokens if slice_tokens > 0 else ids.numel()
        for start in range(placed, ids.numel(), step):
            with torch.inference_mode():
                hidden = self.runner.extend(ids[start:start + step], cache)
            yield hidden.shape[0]
        with torch.inference_mode():
            if cfg.mode == "prefix" and self.prefix_cache is not None:
                self.prefix_cache.insert(tuple(req.token_ids()), cache)
            return BlendResult(cache, self.runner.logits(hidden[-1:])[0], stats)

    def _start(self, req: BlendRequest, cfg: BlendConfig, reserve: int
               ) -> BlendResult | tuple[torch.Tensor, KVCache, int, BlendStats]:
        """Place what the mode reuses. full/prefix: (ids [n], cache, first position to compute, stats) for the
        caller to extend; every other mode: the finished BlendResult."""
        r = self.runner
        n = req.num_tokens
        if n > r.max_positions:
            raise ValueError(f"prompt of {n} tokens exceeds the model context of {r.max_positions}")
        asked, ran = cfg.mode, req.runs(cfg.mode)
        unfused = ran != asked
        if unfused:  # no fused entries to place: the plain-entry default instead, said in the stats
            cfg = replace(cfg, mode=ran)
        cfg = self.with_calibrated_ratio(req, cfg)
        anchored = cfg.kvcomm and bool(req.placeholders)
        if anchored and self.anchors is None:
            raise ValueError(f"mode {cfg.name!r} needs an anchor pool (Blender(anchors=...))")
        stats = BlendStats(cfg.name, n, req.context_len)
        if unfused:
            stats.fallbacks.append(f"{asked}: the request carries no fused contexts (BlendRequest.fused); "
                                   f"{cfg.mode} over the plain entries")
        cache = r.new_cache(n + reserve)
        ids = torch.tensor(req.token_ids(), dtype=torch.int64, device=r.device)  # [n]
        if cfg.mode == "full":
            stats.recomputed_tokens = req.context_len
            stats.attention = r.attention.choose_for(n, n, reference_only=True)
            return ids, cache, 0, stats

        placed = self._place_prefix(req, cache, stats)
        if cfg.mode == "prefix":
            placed = self._recent_prefix(req, cache, placed)
            stats.recomputed_tokens = max(0, req.suffix_start - placed)
            stats.reused_tokens = placed
            stats.attention = r.attention.choose_for(n - placed, n, reference_only=placed == 0)
            self._take_fallbacks(stats)
            return ids, cache, placed, stats
        loader = LayerLoader(self.source, cache)
        try:
            t0 = time.perf_counter()
            plc = (place_anchored(r, self.source, self.anchors, req, cfg, loader, stats) if anchored
                   else Placement(req.suffix_start))
            fresh = plc.fresh
            origins, entries = {}, {}
            for i, (chunk, offset) in enumerate(zip(req.chunks, req.chunk_offsets, strict=True)):
                if placed <= offset < fresh and i not in plc.placed:
                    ctx = req.fused[i] if cfg.mode in FUSED_MODES else None
                    origins[i] = loader.add(chunk, offset, i in req.responses, ctx)
                    entries[i] = ("response",) if origins[i] == "response" else ctx or self.source.context_ids
            if not anchored:
                stats.slots = [{"placeholder": p.name, "base": origins.get(p.chunk, "exact")}
                               for p in req.placeholders]
            stats.timings["place"] = time.perf_counter() - t0
            loader.load(0)  # every position before the fresh region now exists in layer 0
            load0 = stats.timings["load0"] = loader.load_s
            t0 = time.perf_counter()
            if cfg.mode == "naive" or fresh <= placed:
                hidden = r.extend(ids[fresh:], cache, before_layer=loader.load)
            else:
                hidden = self._blend(req, cfg, cache, ids, placed, fresh, stats, loader, frozenset(plc.placed),
                                     entries)
            stats.timings["compute"] = time.perf_counter() - t0 - (loader.load_s - load0)  # loads excluded
        finally:
            loader.close()
        stats.timings["load"] = loader.load_s
        stats.chunk_hits += loader.hits
        stats.chunk_misses += loader.misses
        if plc.rejected:
            stats.anchors_added = measure(r, self.anchors, req, cache, plc.rejected)
        stats.reused_tokens = fresh - stats.recomputed_tokens
        rows = n - fresh + (stats.recomputed_tokens if cfg.mode != "naive" else 0)
        stats.attention = r.attention.choose_for(rows, n, reference_only=rows == n or cfg.mode == "ape")
        self._take_fallbacks(stats)
        correction = None
        if cfg.corrects:
            start = 0 if r.linear.split else placed  # the exact prefix too was computed by the prefill's layers
            correction = DecodeCorrection(ids, start, cfg.correction_per_step(n - start), gate=cfg.correction_gate)
            stats.decode_pending = n - start
        return BlendResult(cache, r.logits(hidden[-1:])[0], stats, correction)

    def _take_fallbacks(self, stats: BlendStats) -> None:
        stats.fallbacks.extend(self.source.fallbacks)
        self.source.fallbacks.clear()

    def _place_prefix(self, req: BlendRequest, cache: KVCache, stats: BlendStats) -> int:
        """Write the exact prefix (and the first chunk if computed behind this very prefix). Returns its length."""
        end = 0
        if req.prefix_ids:
            end = self._place(req.prefix_ids, (), cache, 0, stats)
        if self.source.context_ids == req.prefix_ids:
            end = self._place(req.chunks[0], req.prefix_ids, cache, end, stats)
        return end

    def _place(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] | None, cache: KVCache, offset: int,
               stats: BlendStats) -> int:
        kv, hit = self.source.get(token_ids, context_ids)
        stats.chunk_hits += hit
        stats.chunk_misses += not hit
        end = offset + kv.num_tokens
        cache.write(slice(None), slice(offset, end), kv.keys, kv.values, rope_delta=offset - kv.base_position)
        return end

    def _recent_prefix(self, req: BlendRequest, cache: KVCache, placed: int) -> int:
        """Extend the exact prefix with the longest token prefix shared with a recent prompt (prefix cache)."""
        if self.prefix_cache is None:
            return placed
        m, kv = self.prefix_cache.lookup(tuple(req.token_ids()))
        m = min(m, req.num_tokens - 1)  # at least one token computed for the logits
        if m <= placed:
            return placed
        cache.write(slice(None), slice(0, m), kv[0][:, :, :m], kv[1][:, :, :m])
        return m

    def _blend(self, req: BlendRequest, cfg: BlendConfig, cache: KVCache, ids: torch.Tensor, placed: int, fresh: int,
               stats: BlendStats, loader: LayerLoader, anchored: frozenset[int], entries: dict[int, tuple]
               ) -> torch.Tensor:
        """Selective recompute over the context tokens in [placed, fresh), plus the fresh region; the mode's
        selector (blend/modes.py) decides which. anchored: chunk indices placed from KVCOMM estimates; entries:
        what each placed chunk's KV was computed behind (Candidates.entries)."""
        r = self.runner
        positions = torch.arange(placed, req.num_tokens, device=r.device)  # candidates then fresh rows, increasing
        n_cand = fresh - placed
        budget = round(cfg.recompute_ratio * (fresh - len(req.prefix_ids)))
        sel = select(Candidates(r, cache, ids, req, cfg, placed, fresh, budget, loader.load_all, anchored,
                                loader.load, entries, self.anchor_memo, self.profile_root))
        if sel.keep is not None:
            positions = torch.cat((placed + sel.keep, positions[n_cand:]))
            n_cand = sel.keep.numel()
        adaptive = cfg.adaptive_mass if cfg.mode == "adaptive" else None
        hidden, kept = selective_recompute(r, cache, ids, positions, n_cand, budget, sel.checks, cfg.deviation_on,
                                           adaptive, sel.weights, before_layer=loader.load, pinned=sel.pinned,
                                           temper=sel.temper)
        stats.recomputed_tokens = kept.numel() + (sel.done.numel() if sel.done is not None else 0)
        return hidden
