"""Anchor tensors as ordinary entries of the engine's chunk store: the pool stays bounded by the store's budgets.

The pool keeps only what identifies an anchor (placeholder, token ids, readers, uses); its base KV and its
offsets per reader are ChunkKV entries of the store (the same tiers, budgets and eviction as chunk KV,
keyed apart from chunks by an "anchor" tag). An entry the store evicted reads as AnchorUnavailable: the pool
drops that anchor and the placeholder is computed and measured again, which is KVCOMM's own fallback.
Offsets are one entry per (anchor, reader): the placeholder's L rows, then the following text's F rows.
"""

from __future__ import annotations

import hashlib

import torch

from chunkcache.agents.anchor_pool import Anchor, AnchorOffset, AnchorUnavailable
from chunkcache.blend.chunk_source import KVStore
from chunkcache.store.chunk_kv import ChunkKV


class StoreAnchorTensors:
    """The AnchorPool `loader` over a KVStore. holds_tensors: the pool keeps no tensor in memory."""

    holds_tensors = True

    def __init__(self, store: KVStore, fingerprint: str, device: str = "cpu") -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.device = device

    def _key(self, a: Anchor, part: str) -> str:
        return hashlib.sha256(f"anchor|{self.fingerprint}|{a.anchor_id}|{part}".encode()).hexdigest()

    def _get(self, a: Anchor, part: str) -> ChunkKV:
        kv = self.store.get(self._key(a, part), self.fingerprint, device=self.device)
        if kv is None:
            raise AnchorUnavailable(f"anchor {a.anchor_id[:12]} ({a.placeholder}): {part} evicted from the store")
        return kv

    def save(self, a: Anchor, reader_key: str, off: AnchorOffset, new: bool, base=None) -> None:
        """Put the base (base_k/base_v [n_layers-1, n_kv, L, d], from `base` or the anchor) and this reader's
        offsets."""
        bk, bv = base if base is not None else (a.base_k, a.base_v)
        if bk is not None:
            self.store.put(ChunkKV(self._key(a, "base"), self.fingerprint, a.token_ids, 0, bk.contiguous(),
                                   bv.contiguous()))
        F = off.follow_k.shape[2]
        k = torch.cat((off.ph_k, off.follow_k), dim=2)  # [n_layers-1, n_kv, L+F, d]
        v = torch.cat((off.ph_v, off.follow_v), dim=2)
        self.store.put(ChunkKV(self._key(a, reader_key), self.fingerprint, a.token_ids + (0,) * F, 0, k, v))

    def load_base(self, a: Anchor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self._get(a, "base")
        if kv.token_ids != a.token_ids:
            raise AnchorUnavailable(f"anchor {a.anchor_id[:12]}: stored token ids differ")
        return kv.keys, kv.values

    def load_offset(self, a: Anchor, reader_key: str) -> AnchorOffset:
        kv = self._get(a, reader_key)
        L = a.num_tokens
        if kv.num_tokens < L:
            raise AnchorUnavailable(f"anchor {a.anchor_id[:12]}: offsets span {kv.num_tokens} < {L} tokens")
        return AnchorOffset(kv.keys[:, :, :L], kv.values[:, :, :L], kv.keys[:, :, L:], kv.values[:, :, L:])

    def touch(self, a: Anchor) -> None:
        pass  # uses are counted in the pool; the store's own LRU sees every read

    def delete(self, a: Anchor) -> None:
        delete = getattr(self.store, "delete", None)
        if delete is None:
            return
        for part in ("base", *a.offsets):
            delete(self._key(a, part))
