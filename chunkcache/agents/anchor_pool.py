"""KVCOMM anchor pool: measured KV offsets of earlier placeholder samples, matched to estimate new ones
(the AnchorIndex the blender's KVCOMM step calls, blend/anchoring.py).

An anchor is one placeholder sample (its token ids and base KV). For each reader (a placeholder's
position in one compiled template, `Slot.reader_key`) where that sample was prefilled densely, it
keeps the offsets dense - base of the placeholder's tokens and of the text that follows it.
Only layers 1.. are kept: layer-0 K/V depend on the token and position alone, so base is exact there.

Matching a new sample of length L for a reader: candidates are the anchors of that placeholder with
offsets for the reader and a span of at least L tokens. Distances to the new base: mean absolute
difference (placeholder weights) and per-token L2 norm averaged over tokens (following-text
weights); weights = softmax(-distance / temperature). The sample is reused when there are at least
`min_anchors` candidates and the entropy of both weight vectors is at most threshold * log2(N).
Estimate = base + sum_a w_a * offset_a (first L tokens of each anchor's placeholder offsets).
Exact hit (an addition to KVCOMM): an anchor holding this very sample, measured for this reader behind
the same earlier placeholder contents (`context_digest`), is used alone with weight 1 whatever the
anchor count: its offsets reproduce the dense KV, so repeated prompts are served exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from chunkcache.agents.config import AnchorConfig
from chunkcache.blend.anchoring import AnchorUnavailable
from chunkcache.blend.segment import SegmentKV

__all__ = ["Anchor", "AnchorOffset", "AnchorPool", "AnchorUnavailable", "Match", "anchor_id", "entropy_bits"]


@dataclass
class AnchorOffset:
    """Offsets of one anchor for one reader, frame 0, layers 1..: ph_k/ph_v [n_layers-1, n_kv, L, d],
    follow_k/follow_v [n_layers-1, n_kv, F, d] (F = the reader's following-text length, may be 0)."""

    ph_k: torch.Tensor
    ph_v: torch.Tensor
    follow_k: torch.Tensor
    follow_v: torch.Tensor


@dataclass
class Anchor:
    """base_k/base_v: [n_layers-1, n_kv, L, d] (layers 1..), None until loaded from the store."""

    anchor_id: str
    placeholder: str
    token_ids: tuple[int, ...]
    seq: int
    uses: int = 0
    base_k: torch.Tensor | None = None
    base_v: torch.Tensor | None = None
    offsets: dict[str, AnchorOffset | None] = field(default_factory=dict)  # None: stored, not loaded
    contexts: dict[str, str] = field(default_factory=dict)  # reader_key -> digest of the earlier placeholders

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def anchor_id(fingerprint: str, placeholder: str, token_ids: tuple[int, ...]) -> str:
    h = hashlib.sha256(f"{fingerprint}|{placeholder}|".encode())
    h.update(repr(tuple(token_ids)).encode())
    return h.hexdigest()[:32]


def entropy_bits(w: torch.Tensor) -> float:
    w = w[w > 0]
    return float(-(w * w.log2()).sum())


@dataclass
class Match:
    anchors: list[Anchor]
    w_ph: torch.Tensor  # [N]
    w_follow: torch.Tensor  # [N]
    entropy: float  # bits, the larger of the two weight vectors' entropies
    accept: bool
    reason: str


class AnchorPool:
    """Per placeholder name, at most cfg.max_anchors anchors. `loader` fetches stored tensors lazily."""

    def __init__(self, cfg: AnchorConfig, fingerprint: str, loader=None) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.loader = loader  # object with load_base(anchor), load_offset(anchor, reader_key); None: in memory
        self.anchors: dict[str, list[Anchor]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.anchors.values())

    def restore(self, anchor: Anchor) -> None:
        """Register an anchor known from the store (tensors loaded on first use)."""
        self.anchors.setdefault(anchor.placeholder, []).append(anchor)
        self._seq = max(self._seq, anchor.seq + 1)

    @property
    def _keeps(self) -> bool:
        """Whether loaded tensors stay on the Anchor (not when the loader is a store with its own budget)."""
        return not getattr(self.loader, "holds_tensors", False)

    def _loaded(self, a: Anchor, reader_key: str) -> tuple[torch.Tensor, torch.Tensor, AnchorOffset]:
        """(base_k, base_v [n_layers-1, n_kv, L, d], offsets for the reader)."""
        base_k, base_v = a.base_k, a.base_v
        if base_k is None:
            if self.loader is None:
                raise AnchorUnavailable(f"anchor {a.anchor_id[:12]} ({a.placeholder}) has no base KV")
            base_k, base_v = self.loader.load_base(a)
            if self._keeps:
                a.base_k, a.base_v = base_k, base_v
        off = a.offsets.get(reader_key)
        if off is None:
            if self.loader is None:
                raise AnchorUnavailable(f"anchor {a.anchor_id[:12]} ({a.placeholder}) has no offsets")
            off = self.loader.load_offset(a, reader_key)
            if self._keeps:
                a.offsets[reader_key] = off
        return base_k, base_v, off

    def drop(self, a: Anchor) -> None:
        pool = self.anchors.get(a.placeholder, [])
        if a in pool:
            pool.remove(a)
        if self.loader is not None:
            self.loader.delete(a)

    def _checked(self, a: Anchor, reader_key: str) -> tuple[torch.Tensor, torch.Tensor, AnchorOffset]:
        try:
            return self._loaded(a, reader_key)
        except AnchorUnavailable:
            self.drop(a)
            raise

    def match(self, placeholder: str, reader_key: str, base: SegmentKV, context_digest: str = "") -> Match:
        """Weights of the candidate anchors for this sample. Raises AnchorUnavailable (after dropping the
        anchor) when a candidate's stored tensors cannot be read."""
        L = base.num_tokens
        cands = [a for a in self.anchors.get(placeholder, []) if reader_key in a.offsets and a.num_tokens >= L]
        aid = anchor_id(self.fingerprint, placeholder, base.token_ids)
        same = [a for a in cands if a.anchor_id == aid and a.contexts.get(reader_key) == context_digest]
        if same and context_digest:
            self._checked(same[0], reader_key)
            one = torch.ones(1, device=base.keys.device)
            return Match(same, one, one, 0.0, True, "exact anchor")
        n = len(cands)
        if n < self.cfg.min_anchors:
            flat = torch.ones(n, device=base.keys.device) / max(n, 1)
            return Match(cands, flat, flat, 0.0, False,
                         f"{n} matching anchors < {self.cfg.min_anchors}")
        bk = base.keys[1:].float()  # [n_layers-1, n_kv, L, d]
        bv = base.values[1:].float()
        d_ph, d_fo = [], []
        for a in cands:
            base_k, base_v, _ = self._checked(a, reader_key)
            dk = bk - base_k[:, :, :L].float()  # [n_layers-1, n_kv, L, d]
            dv = bv - base_v[:, :, :L].float()
            d_ph.append(0.5 * (dk.abs().mean() + dv.abs().mean()))
            per_token = (dk.square().sum((0, 1, 3)) + dv.square().sum((0, 1, 3))).sqrt()  # [L]
            d_fo.append(per_token.mean() / math.sqrt(dk[..., 0, :].numel()))
        t = self.cfg.temperature
        w_ph = torch.softmax(-torch.stack(d_ph) / t, 0)
        w_fo = torch.softmax(-torch.stack(d_fo) / t, 0)
        ent = max(entropy_bits(w_ph), entropy_bits(w_fo))
        limit = self.cfg.entropy_threshold * math.log2(n)
        accept = ent <= limit + 1e-9
        return Match(cands, w_ph, w_fo, ent, accept,
                     "reuse" if accept else f"match entropy {ent:.3f} bits > {limit:.3f}")

    def estimate(self, m: Match, reader_key: str, base: SegmentKV, follow: SegmentKV) -> tuple[SegmentKV, SegmentKV]:
        """base + weighted offsets for the placeholder and its following text (frame 0, all layers)."""
        L, F = base.num_tokens, follow.num_tokens
        pk, pv = base.keys.clone(), base.values.clone()
        fk, fv = follow.keys.clone(), follow.values.clone()
        for a, w, wf in zip(m.anchors, m.w_ph.tolist(), m.w_follow.tolist(), strict=True):
            off = self._loaded(a, reader_key)[2]
            if w > 1e-4:
                pk[1:].add_(off.ph_k[:, :, :L].to(pk.dtype), alpha=w)
                pv[1:].add_(off.ph_v[:, :, :L].to(pv.dtype), alpha=w)
            if F and wf > 1e-4:
                fk[1:].add_(off.follow_k.to(fk.dtype), alpha=wf)
                fv[1:].add_(off.follow_v.to(fv.dtype), alpha=wf)
            if max(w, wf) >= 0.1:
                a.uses += 1
                if self.loader is not None:
                    self.loader.touch(a)
        return SegmentKV(base.token_ids, pk, pv), SegmentKV(follow.token_ids, fk, fv)

    def add(self, placeholder: str, reader_key: str, base: SegmentKV, dense: SegmentKV, follow_base: SegmentKV,
            follow_dense: SegmentKV, context_digest: str = "") -> Anchor:
        """Record dense - base for this sample and reader (all frame 0). Returns the (new or existing) anchor."""
        dt = self.cfg.torch_dtype
        aid = anchor_id(self.fingerprint, placeholder, base.token_ids)
        pool = self.anchors.setdefault(placeholder, [])
        a = next((x for x in pool if x.anchor_id == aid), None)
        new = a is None
        if new:
            a = Anchor(aid, placeholder, base.token_ids, self._seq, 0, base.keys[1:].to(dt), base.values[1:].to(dt))
            self._seq += 1
            pool.append(a)
        elif a.base_k is None:
            a.base_k, a.base_v = base.keys[1:].to(dt), base.values[1:].to(dt)
        off = AnchorOffset((dense.keys[1:] - base.keys[1:]).to(dt), (dense.values[1:] - base.values[1:]).to(dt),
                           (follow_dense.keys[1:] - follow_base.keys[1:]).to(dt),
                           (follow_dense.values[1:] - follow_base.values[1:]).to(dt))
        a.offsets[reader_key] = off
        a.contexts[reader_key] = context_digest
        if self.loader is not None:
            self.loader.save(a, reader_key, off, new)
            if not self._keeps:  # the store holds them now, under its budget
                a.base_k = a.base_v = None
                a.offsets[reader_key] = None
        self._prune(pool)
        return a

    def _prune(self, pool: list[Anchor]) -> None:
        while len(pool) > self.cfg.max_anchors:
            oldest = sorted(pool, key=lambda x: x.seq)[: self.cfg.prune_window]
            victim = min(oldest, key=lambda x: (x.uses, x.seq))
            self.drop(victim)
