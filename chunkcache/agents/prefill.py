"""Prefill one agent turn's prompt in a chosen mode; returns the merged cache, logits and stats.

dense         every token computed from scratch (the reference);
prefix        longest token prefix shared with a recent prompt reused exactly, the rest computed;
kvcomm        the agent prefix placed exactly; each placeholder and its following text placed from the
              anchor estimate (base + weighted offsets, keys rotated to their positions); the suffix
              computed. From the first placeholder that fails admission (too few anchors, flat match
              weights) or whose anchor is unreadable, the prompt is prefilled densely (behind the exact
              prefix and the earlier estimates) and each rejected placeholder becomes an anchor (its
              offsets measured from that KV); `dense_fallback` says so in the stats;
blend         placeholders' base KV placed as is, then CacheBlend selective recompute;
kvcomm+blend  the kvcomm estimate placed, then CacheBlend selective recompute of the tokens whose
              K/V still deviate most at the check layer (same admission and fallback as kvcomm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from chunkcache.agents.anchor_pool import AnchorPool, AnchorUnavailable, Match
from chunkcache.agents.base_kv import BaseSource, SegmentKV, rotate
from chunkcache.agents.config import AgentPrefillConfig
from chunkcache.agents.prefix_cache import PrefixCache
from chunkcache.agents.template import AgentPrompt
from chunkcache.blend.recompute import selective_recompute
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner

log = logging.getLogger(__name__)


@dataclass
class TurnStats:
    mode: str
    prompt_tokens: int
    reused_tokens: int = 0  # prompt tokens whose KV came from a cache at layers >= 1
    recomputed_tokens: int = 0  # blend modes: placeholder/following-text tokens recomputed
    anchors_hit: int = 0  # placeholders served from an anchor estimate
    anchors_added: int = 0
    dense_fallback: bool = False
    fallbacks: list[str] = field(default_factory=list)
    slots: list[dict] = field(default_factory=list)
    ttft_s: float = 0.0

    @property
    def reuse_rate(self) -> float:
        return self.reused_tokens / max(1, self.prompt_tokens)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["reuse_rate"] = self.reuse_rate
        return d


@dataclass
class AgentPrefill:
    cache: KVCache  # prompt KV at positions 0..prompt_tokens-1
    logits: torch.Tensor  # [vocab] fp32 next-token logits
    stats: TurnStats


def _empty(runner: ModelRunner) -> SegmentKV:
    z = torch.empty((runner.n_layers, runner.n_kv_heads, 0, runner.head_dim), dtype=runner.dtype, device=runner.device)
    return SegmentKV((), z, z.clone())


class AgentPrefiller:
    def __init__(self, runner: ModelRunner, bases: BaseSource, pool: AnchorPool | None = None,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.runner = runner
        self.bases = bases
        self.pool = pool
        self.prefix_cache = prefix_cache

    @torch.inference_mode()
    def prefill(self, prompt: AgentPrompt, cfg: AgentPrefillConfig, reserve: int = 0) -> AgentPrefill:
        r, n = self.runner, prompt.num_tokens
        if n > r.max_positions:
            raise ValueError(f"prompt of {n} tokens exceeds the model context of {r.max_positions}")
        if cfg.uses_anchors and self.pool is None:
            raise ValueError(f"mode {cfg.mode!r} needs an anchor pool")
        stats = TurnStats(cfg.mode, n)
        ids = torch.tensor(prompt.token_ids(), dtype=torch.int64, device=r.device)
        cache = r.new_cache(n + reserve)
        if cfg.mode == "dense":
            return AgentPrefill(cache, r.logits(r.extend(ids, cache)[-1:])[0], stats)
        if cfg.mode == "prefix":
            return self._prefix(prompt, ids, cache, stats)
        start = self._place_prefix(prompt, cache)
        bases = [self.bases.get(c) for c in prompt.contents]
        follows = [self.bases.get(s.follow_ids)[0] if s.follow_ids else _empty(r) for s in prompt.slots]
        placed = placed_bases = [(b, f) for (b, _), f in zip(bases, follows)]
        for slot, (_, origin) in zip(prompt.slots, bases):
            stats.slots.append({"placeholder": slot.name, "base": origin})
        n_ok = len(placed)  # slots placed from cache; the prompt from slot n_ok on is computed
        if cfg.uses_anchors:
            matches = self._admit(prompt, placed, stats)
            n_ok = next((i for i, m in enumerate(matches) if m is None or not m.accept), len(matches))
            placed = [self.pool.estimate(m, s.reader_key, b, f)
                      for m, s, (b, f) in zip(matches[:n_ok], prompt.slots, placed)]
            stats.anchors_hit = n_ok
            stats.dense_fallback = n_ok < len(matches)
        for (b, f), (o, fo) in zip(placed, prompt.offsets()):
            cache.write(slice(None), slice(o, o + b.num_tokens), b.keys, b.values, rope_delta=o)
            if f.num_tokens:
                cache.write(slice(None), slice(fo, fo + f.num_tokens), f.keys, f.values, rope_delta=fo)
        cut = prompt.offsets()[n_ok][0] if n_ok < len(prompt.slots) else prompt.suffix_start
        if cfg.blends and cut > start:
            count = round(cfg.recompute_ratio * (cut - start))
            checks = (cfg.check_layer,) if count < cut - start else ()
            hidden, recomputed = selective_recompute(r, cache, ids, torch.arange(start, n, device=r.device), cut - start, count,
                                                     checks, cfg.deviation_on)
            stats.recomputed_tokens = recomputed.numel()
        else:
            hidden = r.extend(ids[cut:], cache)
        stats.reused_tokens = cut - stats.recomputed_tokens
        if stats.dense_fallback:
            self._add_anchors(prompt, cache, placed_bases, n_ok, stats)
        stats.fallbacks.extend(self.bases.fallbacks)
        self.bases.fallbacks.clear()
        return AgentPrefill(cache, r.logits(hidden[-1:])[0], stats)

    def _prefix(self, prompt: AgentPrompt, ids: torch.Tensor, cache: KVCache, stats: TurnStats) -> AgentPrefill:
        r, key = self.runner, tuple(prompt.token_ids())
        pc = self.prefix_cache if self.prefix_cache is not None else PrefixCache()
        m, kv = pc.lookup(key)
        m = min(m, len(key) - 1)  # at least one token computed for the logits
        if m:
            cache.write(slice(None), slice(0, m), kv[0][:, :, :m], kv[1][:, :, :m])
        hidden = r.extend(ids[m:], cache)
        pc.insert(key, cache)
        self.prefix_cache = pc
        stats.reused_tokens = m
        return AgentPrefill(cache, r.logits(hidden[-1:])[0], stats)

    def _place_prefix(self, prompt: AgentPrompt, cache: KVCache) -> int:
        """The agent prefix, computed alone at position 0 (so exact), from the store or computed once."""
        if not prompt.prefix_ids:
            return 0
        kv, _ = self.bases.chunks.get(prompt.prefix_ids, ())
        cache.write(slice(None), slice(0, kv.num_tokens), kv.keys, kv.values)
        return kv.num_tokens

    def _admit(self, prompt: AgentPrompt, placed: list[tuple[SegmentKV, SegmentKV]],
               stats: TurnStats) -> list[Match | None]:
        """A match per slot (None where an anchor was unusable); decisions and reasons go into stats."""
        matches: list[Match | None] = []
        digests = prompt.context_digests()
        for i, (slot, (base, _)) in enumerate(zip(prompt.slots, placed)):
            try:
                m = self.pool.match(slot.name, slot.reader_key, base, digests[i])
            except AnchorUnavailable as err:
                msg = f"anchor_unavailable: placeholder {slot.name!r}: anchor unusable ({err}); dense prefill"
                log.warning(msg)
                stats.fallbacks.append(msg)
                stats.slots[i].update(decision="dense", reason=str(err))
                matches.append(None)
                continue
            stats.slots[i].update(decision="reuse" if m.accept else "dense", anchors=len(m.anchors),
                                  entropy=round(m.entropy, 4), reason=m.reason)
            matches.append(m)
        return matches

    def _add_anchors(self, prompt: AgentPrompt, cache: KVCache, placed: list[tuple[SegmentKV, SegmentKV]],
                     n_ok: int, stats: TurnStats) -> None:
        """Each rejected slot from n_ok on (computed in this prefill) becomes an anchor: offsets = its computed
        KV (rotated back to position 0) minus its base. Exact dense KV when n_ok == 0; otherwise computed
        behind the earlier slots' estimates."""
        r = self.runner
        digests = prompt.context_digests()
        for i in range(n_ok, len(prompt.slots)):
            if stats.slots[i].get("decision") != "dense":
                continue
            slot, (base, follow), (o, fo) = prompt.slots[i], placed[i], prompt.offsets()[i]
            L, F = base.num_tokens, follow.num_tokens
            dense = SegmentKV(base.token_ids, rotate(cache.keys[:, :, o:o + L], -o, r.inv_freq),
                              cache.values[:, :, o:o + L].clone())
            follow_dense = SegmentKV(follow.token_ids, rotate(cache.keys[:, :, fo:fo + F], -fo, r.inv_freq),
                                     cache.values[:, :, fo:fo + F].clone())
            self.pool.add(slot.name, slot.reader_key, base, dense, follow, follow_dense, digests[i])
            stats.anchors_added += 1
