"""Prefill a request from chunk KV: place each chunk by RoPE shift, recompute what deviates.

Modes (BlendConfig.mode):
  full        every token computed (the reference);
  prefix      exact prefix reuse only: the system prefix, plus the first chunk when it was
              precomputed behind exactly this prefix; everything after is computed;
  naive       all chunk KV placed, only the suffix computed;
  cacheblend  layers before the first check layer computed for every context token; at each check
              layer fresh K/V of the computed tokens are compared with the cached ones and the set is
              narrowed, down to recompute_ratio * context tokens; their fresh K/V overwrite the cache;
  adaptive    as cacheblend, the count chosen per request from the deviation mass (capped by the ratio);
  epic, ape, query, prophet, blend: the published successors and chunkcache's own default, each a
              selector in blend/modes.py feeding the same recompute loop.
The suffix is computed in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chunkcache.blend.chunk_source import ChunkSource
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.layer_loader import LayerLoader
from chunkcache.blend.modes import Candidates, select
from chunkcache.blend.request import BlendRequest
from chunkcache.blend.recompute import selective_recompute
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@dataclass
class BlendStats:
    mode: str
    prompt_tokens: int
    context_tokens: int
    recomputed_tokens: int = 0  # context tokens recomputed past the first check layer (suffix excluded)
    reused_tokens: int = 0  # prompt tokens whose KV came from cache at any layer
    chunk_hits: int = 0
    chunk_misses: int = 0
    fallbacks: list[str] = field(default_factory=list)

    @property
    def recompute_fraction(self) -> float:
        return self.recomputed_tokens / max(1, self.context_tokens)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["recompute_fraction"] = self.recompute_fraction
        return d


@dataclass
class BlendResult:
    cache: KVCache  # merged KV of the whole prompt, positions 0..prompt_tokens-1
    logits: torch.Tensor  # [vocab] fp32, next-token logits after the prompt
    stats: BlendStats


class Blender:
    def __init__(self, runner: ModelRunner, source: ChunkSource) -> None:
        self.runner = runner
        self.source = source

    @torch.inference_mode()
    def prefill(self, req: BlendRequest, cfg: BlendConfig, reserve: int = 0) -> BlendResult:
        """Run the prompt and return the merged cache and last-token logits. reserve: extra capacity for decode."""
        r = self.runner
        n = req.num_tokens
        if n > r.max_positions:
            raise ValueError(f"prompt of {n} tokens exceeds the model context of {r.max_positions}")
        stats = BlendStats(cfg.mode, n, req.context_len)
        cache = r.new_cache(n + reserve)
        ids = torch.tensor(req.token_ids(), dtype=torch.int64, device=r.device)
        if cfg.mode == "full":
            hidden = r.extend(ids, cache)
            stats.recomputed_tokens = req.context_len
            return BlendResult(cache, r.logits(hidden[-1:])[0], stats)

        placed = self._place_prefix(req, cache, stats)
        if cfg.mode == "prefix":
            hidden = r.extend(ids[placed:], cache)
            stats.recomputed_tokens = n - placed - len(req.suffix_ids)
        else:
            loader = LayerLoader(self.source, cache)
            try:
                for chunk, offset in zip(req.chunks, req.chunk_offsets):
                    if offset >= placed:
                        loader.add(chunk, offset)
                loader.load(0)  # every position before the suffix now exists in layer 0
                if cfg.mode == "naive":
                    hidden = r.extend(ids[req.suffix_start:], cache, before_layer=loader.load)
                else:
                    hidden = self._blend(req, cfg, cache, ids, placed, stats, loader)
            finally:
                loader.close()
            stats.chunk_hits += loader.hits
            stats.chunk_misses += loader.misses
        stats.reused_tokens = n - len(req.suffix_ids) - stats.recomputed_tokens
        stats.fallbacks = list(self.source.fallbacks)
        self.source.fallbacks.clear()
        return BlendResult(cache, r.logits(hidden[-1:])[0], stats)

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

    def _blend(self, req: BlendRequest, cfg: BlendConfig, cache: KVCache, ids: torch.Tensor, placed: int,
               stats: BlendStats, loader: LayerLoader) -> torch.Tensor:
        """Selective recompute over the context tokens after `placed`, plus the suffix; the mode's selector
        (blend/modes.py) decides which."""
        r = self.runner
        positions = torch.arange(placed, req.num_tokens, device=r.device)  # candidates then suffix, increasing
        n_cand = req.suffix_start - placed
        budget = round(cfg.recompute_ratio * req.context_len)
        sel = select(Candidates(r, cache, ids, req, cfg, placed, budget, loader.load_all))
        if sel.keep is not None:
            positions = torch.cat((placed + sel.keep, positions[n_cand:]))
            n_cand = sel.keep.numel()
        adaptive = cfg.adaptive_mass if cfg.mode == "adaptive" else None
        hidden, kept = selective_recompute(r, cache, ids, positions, n_cand, budget, sel.checks, cfg.deviation_on,
                                           adaptive, sel.weights, before_layer=loader.load, pinned=sel.pinned,
                                           temper=sel.temper)
        stats.recomputed_tokens = kept.numel()
        return hidden
