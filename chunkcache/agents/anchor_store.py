"""Anchors on disk: checksummed safetensors entries (the store's entry format) plus an SQL catalog.

Layout under `root` (default <cache_dir>/anchors/<model fingerprint>):
  anchors.sqlite                      catalog (anchor_catalog.py)
  <anchor_id>.base.safetensors        base K/V of the placeholder sample, layers 1..
  <anchor_id>.<reader_key>.safetensors  placeholder offsets then following-text offsets along tokens
Each file is a ChunkKV entry (entry_format: per-layer xxh3 checksums, key and fingerprint in the
header), written to a temporary name and renamed. A pool directory written by another model is
refused when opened; an unreadable file raises AnchorUnavailable (the turn falls back to dense).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chunkcache.agents.anchor_catalog import AnchorCatalog
from chunkcache.agents.anchor_pool import Anchor, AnchorOffset, AnchorPool, AnchorUnavailable
from chunkcache.agents.config import AnchorConfig
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.entry_format import decode_buffer, encode
from chunkcache.store.errors import EntryUnavailable


class AnchorStore:
    def __init__(self, root: str | Path, fingerprint: str, n_layers: int) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.n_layers = n_layers
        self.catalog = AnchorCatalog(self.root / "anchors.sqlite")
        others = sorted(self.catalog.fingerprints() - {fingerprint})
        if others:
            self.catalog.close()
            raise ValueError(f"anchor pool at {self.root} holds anchors of another model (fingerprint {others[0]}); "
                             f"this model is {fingerprint}: use another anchor_dir")

    def open_pool(self, cfg: AnchorConfig) -> AnchorPool:
        """A pool holding every stored anchor of this model (tensors are read on first use)."""
        pool = AnchorPool(cfg, self.fingerprint, loader=self)
        for rec in self.catalog.records(self.fingerprint):
            pool.restore(Anchor(rec.anchor_id, rec.placeholder, rec.token_ids, rec.seq, rec.uses,
                                offsets={k: None for k in rec.readers},
                                contexts={k: d for k, (_, d) in rec.readers.items()}))
        return pool

    def _path(self, anchor_id: str, part: str) -> Path:
        return self.root / f"{anchor_id}.{part}.safetensors"

    def _write(self, key: str, path: Path, token_ids: tuple[int, ...], k: torch.Tensor, v: torch.Tensor) -> None:
        data = encode(ChunkKV(key, self.fingerprint, token_ids, 0, k.contiguous(), v.contiguous()))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _read(self, key: str, path: Path) -> ChunkKV:
        try:
            data = path.read_bytes()
            kv = decode_buffer(torch.frombuffer(bytearray(data), dtype=torch.uint8), key, self.fingerprint)
        except FileNotFoundError:
            raise AnchorUnavailable(f"anchor file {path.name} is missing") from None
        except EntryUnavailable as err:
            raise AnchorUnavailable(f"anchor file {path.name} is unreadable ({err})") from None
        if kv.keys.shape[0] != self.n_layers - 1:
            raise AnchorUnavailable(f"anchor file {path.name} has {kv.keys.shape[0]} layers, "
                                    f"expected {self.n_layers - 1}")
        return kv

    def save(self, a: Anchor, reader_key: str, off: AnchorOffset, new: bool) -> None:
        if new:
            key = f"{a.anchor_id}.base"
            self._write(key, self._path(a.anchor_id, "base"), a.token_ids, a.base_k, a.base_v)
            self.catalog.add_anchor(a.anchor_id, self.fingerprint, a.placeholder, a.token_ids, a.seq)
        F = off.follow_k.shape[2]
        k = torch.cat((off.ph_k, off.follow_k), dim=2)  # [n_layers-1, n_kv, L+F, d]
        v = torch.cat((off.ph_v, off.follow_v), dim=2)
        self._write(f"{a.anchor_id}.{reader_key}", self._path(a.anchor_id, reader_key), a.token_ids + (0,) * F, k, v)
        self.catalog.add_offset(a.anchor_id, reader_key, F, a.contexts.get(reader_key, ""))

    def load_base(self, a: Anchor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self._read(f"{a.anchor_id}.base", self._path(a.anchor_id, "base"))
        if kv.token_ids != a.token_ids:
            raise AnchorUnavailable(f"anchor {a.anchor_id[:12]}: stored token ids differ from the catalog")
        return kv.keys, kv.values

    def load_offset(self, a: Anchor, reader_key: str) -> AnchorOffset:
        kv = self._read(f"{a.anchor_id}.{reader_key}", self._path(a.anchor_id, reader_key))
        L = a.num_tokens
        if kv.num_tokens < L:
            raise AnchorUnavailable(f"anchor {a.anchor_id[:12]}: offsets span {kv.num_tokens} < {L} tokens")
        return AnchorOffset(kv.keys[:, :, :L], kv.values[:, :, :L], kv.keys[:, :, L:], kv.values[:, :, L:])

    def touch(self, a: Anchor) -> None:
        self.catalog.set_uses(a.anchor_id, a.uses)

    def delete(self, a: Anchor) -> None:
        self.catalog.delete(a.anchor_id)
        for p in self.root.glob(f"{a.anchor_id}.*"):
            p.unlink(missing_ok=True)

    def close(self) -> None:
        self.catalog.close()
