"""ChunkStore: one API over ordered tiers (GPU, CPU, disk, remote), with a SQL catalog.

Reads: `get(key, fingerprint, device)` tries tiers fastest first and returns a ChunkKV the caller
owns, or None. None means "recompute": a plain miss, or an entry that is unusable (corrupt,
truncated, file gone, catalog row gone, server down, another model's fingerprint); each such
fault is logged and counted under its reason in `stats()["fallbacks"]`. Wrong or partial KV is
never returned. A hit in a slower tier is promoted (copied) into the fastest tier.
Writes: `put(kv)` stores into the fastest tier whose budget can hold it and into every
write-through tier; a full tier evicts by its policy and demotes (writes back) the victim into
the next slower tier when that tier can hold it. Pinned keys are never evicted. Once a memory tier
holds the entry, the writes to disk/remote tiers and the catalog row are queued to a bounded
background writer (StoreConfig.write_queue), and so is the demotion of an entry a memory tier evicts:
the request path never waits on a file, a server or the catalog database. A put waits at most
StoreConfig.write_wait_s for room in a full queue (measured in `stats()["writer"]`), then drops its
slow-tier writes; every failed or dropped background write (tier write, catalog row, write_queue_full)
is counted in `stats()["put_failures"]`; `flush()` and `close()` drain the queue.
`get_layers` returns a LayerStream (see layer_stream.py) for pipelined per-layer loading.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from chunkcache.store.catalog import Catalog, ChunkMeta
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.config import StoreConfig
from chunkcache.store.errors import EntryUnavailable, Reason, TierWriteError, brief_error
from chunkcache.store.eviction import estimate_recompute_cost
from chunkcache.store.layer_stream import LayerStream
from chunkcache.store.memory_tier import MemoryTier
from chunkcache.store.stats import StoreStats
from chunkcache.store.tier import Tier
from chunkcache.store.tier_factory import build_tier
from chunkcache.store.tier_slot import TierSlot
from chunkcache.store.write_behind import WriteBehind

log = logging.getLogger("chunkcache.store")


class ChunkStore:
    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config = config or StoreConfig()
        cache_dir = config.resolved_cache_dir
        tcs = [t for t in config.tiers if t.kind != "gpu" or torch.cuda.is_available()]
        if len(tcs) < len(config.tiers):
            log.info("chunk store: no CUDA, GPU tier skipped")
        if not tcs:
            raise ValueError("no usable tier (only a GPU tier was configured and CUDA is absent)")
        self._slots = [TierSlot(tc, build_tier(tc, cache_dir)) for tc in tcs]
        self.catalog = (Catalog(config.resolved_catalog_url, config.catalog_flush_every)
                        if config.wants_catalog else None)
        self._stats = StoreStats([s.name for s in self._slots], config.max_recent_faults)
        # With a remote tier the catalog is shared by replicas: its on_disk flag is some node's, not ours.
        self._shared = any(s.name == "remote" for s in self._slots)
        self._lock = threading.RLock()
        self._pinned: set[str] = set()
        self._costs: dict[str, float] = {}
        slow = any(s.tier.persistent for s in self._slots)
        self._writer = WriteBehind(config.write_queue, on_error=self._writer_error) \
            if config.write_queue and slow else None
        for i, slot in enumerate(self._slots):
            for key, size in slot.tier.scan():
                slot.record(key, size, self._cost_of(key, size))
            self._make_room(i, 0)

    # ---- helpers -----------------------------------------------------------------------------
    def _writer_error(self, err: BaseException) -> None:
        """A background job that raised past its own handlers (the writer goes on)."""
        self._stats.fault("-", "writer", Reason.IO_ERROR, f"{type(err).__name__}: {err}", write=True)

    def _queue(self, job, tiers: list[TierSlot], key: str, wait_s: float) -> bool:  # type: ignore[no-untyped-def]
        """Hand job to the background writer; if it stays full for wait_s, drop it and count each tier's write."""
        t0 = time.perf_counter()
        ok = self._writer.submit(job, timeout=wait_s)  # type: ignore[union-attr]
        self._stats.queued(time.perf_counter() - t0, ok)
        if not ok:
            for slot in tiers:
                self._stats.fault(key, slot.name, Reason.WRITE_QUEUE_FULL,
                                  f"{self.config.write_queue} writes already queued", write=True)
        return ok

    def _upsert(self, meta: ChunkMeta) -> None:
        """The catalog row; a database that refuses or does not answer is counted, never raised (background)."""
        try:
            self.catalog.upsert(meta)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - SQLAlchemy or driver errors: the tier writes go on
            self._stats.fault(meta.key, "catalog", Reason.CATALOG_UNAVAILABLE, brief_error(e), write=True)

    def _cost_of(self, key: str, size: int) -> float:
        return self._costs.get(key) or max(float(size) / 1024.0, 1.0)

    def _fault(self, key: str, slot: TierSlot, err: EntryUnavailable | TierWriteError, write: bool = False,
               faults: list[str] | None = None) -> None:
        """Record the fault in stats and, when the caller passed a list, in it as "<reason>: <detail>"."""
        self._stats.fault(key, slot.name, err.reason, err.detail, write=write)
        if faults is not None:
            what = "write failed" if write else "unusable"
            faults.append(f"{err.reason.value}: chunk {key[:12]} {what} on the {slot.name} tier ({err.detail})")
        if isinstance(err, EntryUnavailable) and err.drop:
            with self._lock:
                slot.tier.delete(key)
                self._forget(slot, key)

    def _forget(self, slot: TierSlot, key: str) -> None:
        slot.forget(key)
        if not any(key in s.sizes for s in self._slots):  # this process's view: no round trip under the lock
            self._costs.pop(key, None)  # gone from every tier: per-key bookkeeping must not outlive the entry
        if self.catalog is not None and slot.tier.persistent and not (self._shared and slot.name == "disk"):
            self.catalog.set_tier(key, slot.name, False)

    def _meta(self, kv: ChunkKV, tier: str | None, doc: tuple[str | None, str | None]) -> ChunkMeta:
        return ChunkMeta(kv.key, kv.fingerprint, kv.num_tokens, str(kv.keys.dtype).removeprefix("torch."),
                         tuple(kv.keys.shape), kv.nbytes, self._cost_of(kv.key, kv.nbytes), doc[0], doc[1],
                         on_disk=tier == "disk", on_remote=tier == "remote")

    def _insert(self, i: int, kv: ChunkKV, *, owned: bool = False,
                doc: tuple[str | None, str | None] = (None, None)) -> None:
        """Store kv in tier i, evicting (and demoting) others as its budget requires."""
        slot = self._slots[i]
        cost = self._costs.setdefault(kv.key, estimate_recompute_cost(kv.num_tokens, kv.keys.shape[0]))
        slot.require_fit(kv.nbytes, kv.keys.element_size())
        self._make_room(i, kv.nbytes if not slot.tier.persistent else 0, protect=kv.key)
        if isinstance(slot.tier, MemoryTier):
            size = slot.tier.put(kv, owned=owned)
        else:
            size = slot.tier.put(kv)
        slot.record(kv.key, size, cost)
        self._stats.count(slot.name, "puts")
        if self.catalog is not None and slot.tier.persistent:  # after the file: a crash leaves no row
            self.catalog.upsert(self._meta(kv, slot.name, doc))
        try:
            self._make_room(i, 0, protect=kv.key)
        except TierWriteError:
            slot.tier.delete(kv.key)
            slot.forget(kv.key)
            raise

    def _make_room(self, i: int, extra: int, protect: str | None = None) -> None:
        slot = self._slots[i]
        while slot.overflow(extra) > 0:
            excluded = self._pinned | ({protect} if protect else set())
            victim = slot.policy.pop_victim(excluded)
            if victim is None:
                raise TierWriteError(Reason.TOO_LARGE, f"{slot.name} tier full of pinned entries")
            self._evict(i, victim)

    def _evict(self, i: int, key: str) -> None:
        slot = self._slots[i]
        if i + 1 < len(self._slots):
            nxt = self._slots[i + 1]
            try:
                if nxt.tier.persistent and not slot.tier.persistent and self._writer is not None:
                    # a write-through tier already got (or has queued) the entry; otherwise queue the demotion:
                    # under the store lock, never wait on the slow tier
                    if key not in nxt.sizes and not nxt.config.write_through:
                        kv = slot.tier.get(key, None)
                        if self._queue(lambda: self._demote(i, kv), [nxt], key, 0.0):
                            self._forget(slot, key)  # out of the budget; still readable here until it lands
                            self._stats.count(slot.name, "evictions")
                            return
                elif not nxt.holds(key):
                    self._insert(i + 1, slot.tier.get(key, None), owned=True)
                    self._stats.count(slot.name, "demotions")
            except KeyError:
                pass
            except (EntryUnavailable, TierWriteError) as e:
                self._stats.fault(key, nxt.name, e.reason, f"demotion: {e.detail}", write=True)
        slot.tier.delete(key)
        self._forget(slot, key)
        self._stats.count(slot.name, "evictions")

    def _demote(self, i: int, kv: ChunkKV) -> None:
        """Background: kv, evicted from memory tier i (which keeps it readable until now), into tier i + 1."""
        try:
            if not self._slots[i + 1].holds(kv.key):
                self._write_behind(kv, [i + 1], (None, None))
                if self._slots[i + 1].holds(kv.key):
                    self._stats.count(self._slots[i].name, "demotions")
        finally:
            with self._lock:
                if kv.key not in self._slots[i].sizes:  # not put again meanwhile
                    self._slots[i].tier.delete(kv.key)

    def _disk_catalog_check(self, slot: TierSlot, key: str, fingerprint: str, faults: list[str] | None) -> bool:
        """For the disk tier with a catalog: is the file backed by a row for this model? Records faults."""
        exists = slot.tier.contains(key)
        row = self.catalog.get(key) if self.catalog is not None else None
        if row is not None and row.fingerprint != fingerprint:
            raise EntryUnavailable(Reason.FINGERPRINT_MISMATCH, f"catalog row is for {row.fingerprint!r}", drop=False)
        if not exists:
            if row is not None and row.on_disk and not self._shared:
                self._fault(key, slot, EntryUnavailable(Reason.FILE_MISSING, str(slot.tier.path(key))),
                            faults=faults)
            return False
        if row is None and self.catalog is not None:
            self._fault(key, slot, EntryUnavailable(Reason.CATALOG_ROW_MISSING, "file without catalog row", drop=False),
                        faults=faults)
            return False
        return True

    def _hit(self, i: int, kv: ChunkKV) -> None:
        with self._lock:
            slot = self._slots[i]
            if kv.key in slot.sizes:
                slot.policy.touch(kv.key)
            if i > 0 and self.config.promote_on_hit and kv.key not in self._slots[0].sizes:
                try:
                    self._insert(0, kv, owned=True)
                    self._stats.count(self._slots[0].name, "promotions")
                except TierWriteError as e:
                    self._stats.fault(kv.key, self._slots[0].name, e.reason, f"promotion: {e.detail}", write=True)
        if self.catalog is not None:
            self.catalog.touch(kv.key)

    def _lookup(self, key: str, fingerprint: str, open_fn: str,  # type: ignore[no-untyped-def]
                faults: list[str] | None):
        """First usable (tier index, result of tier.<open_fn>) or None, recording faults."""
        for i, slot in enumerate(self._slots):
            try:
                if slot.name == "disk" and not self._disk_catalog_check(slot, key, fingerprint, faults):
                    continue
                return i, getattr(slot.tier, open_fn)(key, fingerprint)
            except KeyError:
                continue
            except EntryUnavailable as e:
                self._fault(key, slot, e, faults=faults)
                if e.reason == Reason.FINGERPRINT_MISMATCH:
                    return None  # a read for another model is refused outright
        return None

    # ---- public API --------------------------------------------------------------------------
    def put(self, kv: ChunkKV, *, source_doc_id: str | None = None, text_hash: str | None = None,
            recompute_cost: float | None = None, faults: list[str] | None = None) -> bool:
        """Store kv (a copy: later changes to the caller's tensors do not reach the cache).

        recompute_cost: prefill cost of the chunk (any unit, e.g. seconds) for the cost-aware policy;
        default estimate_recompute_cost(L, n_layers). Returns False when no tier could take it.
        """
        if not isinstance(kv, ChunkKV):
            raise TypeError(f"put expects a ChunkKV, got {type(kv).__name__}")
        placed, doc = False, (source_doc_id, text_hash)
        held: ChunkKV | None = None  # the memory tier's own copy, once it holds the entry
        deferred: list[int] = []
        with self._lock:
            if recompute_cost is not None:
                self._costs[kv.key] = float(recompute_cost)
            for i, slot in enumerate(self._slots):
                if placed and not slot.config.write_through:
                    continue
                if held is not None and self._writer is not None and slot.tier.persistent:
                    deferred.append(i)
                    continue
                try:
                    self._insert(i, kv, doc=doc)
                    placed = True
                    if isinstance(slot.tier, MemoryTier) and held is None:
                        held = slot.tier.get(kv.key, None)
                except TierWriteError as e:
                    self._fault(kv.key, slot, e, write=True, faults=faults)
            if placed and self.catalog is not None and held is None:  # memory-only entries get a row too
                self.catalog.upsert(self._meta(kv, None, doc))
        if held is not None and self._writer is not None and (deferred or self.catalog is not None):
            self._queue(lambda: self._write_behind(held, deferred, doc), [self._slots[i] for i in deferred],
                        kv.key, self.config.write_wait_s)
        return placed

    def _write_behind(self, kv: ChunkKV, tiers: list[int], doc: tuple[str | None, str | None]) -> None:
        """Background: the catalog row, then kv into each persistent tier in `tiers`; the file is written
        outside the store lock, so lookups and memory-tier puts go on meanwhile."""
        if self.catalog is not None:
            self._upsert(self._meta(kv, None, doc))
        for i in tiers:
            slot = self._slots[i]
            try:
                with self._lock:
                    slot.require_fit(kv.nbytes, kv.keys.element_size())
                    self._make_room(i, 0, protect=kv.key)
                size = slot.tier.put(kv)
                with self._lock:
                    slot.record(kv.key, size, self._cost_of(kv.key, size))
                    self._stats.count(slot.name, "puts")
                if self.catalog is not None:
                    self._upsert(self._meta(kv, slot.name, doc))
                with self._lock:
                    self._make_room(i, 0, protect=kv.key)
            except TierWriteError as e:
                self._fault(kv.key, slot, e, write=True)
            except Exception as e:  # noqa: BLE001 - a write-back must never kill the writer
                self._fault(kv.key, slot, TierWriteError(Reason.IO_ERROR, f"{type(e).__name__}: {e}"), write=True)

    def flush(self) -> None:
        """Wait until every queued background write has landed."""
        if self._writer is not None:
            self._writer.flush()

    def get(self, key: str, fingerprint: str, device: torch.device | str = "cpu",
            faults: list[str] | None = None) -> ChunkKV | None:
        """The chunk's KV on `device`, owned by the caller; None on a miss or an unusable entry.

        faults: a list that receives "<reason>: <detail>" for every unusable entry met on the way."""
        found = self._lookup(key, fingerprint, "get", faults)
        if found is None:
            self._stats.lookup(None)
            return None
        i, kv = found
        self._stats.lookup(self._slots[i].name)
        self._hit(i, kv)
        fresh = self._slots[i].tier.persistent and not (i > 0 and self.config.promote_on_hit)
        return kv.to(device) if fresh else ChunkKV(kv.key, kv.fingerprint, kv.token_ids, kv.base_position,
                                                   kv.keys.to(device, copy=True), kv.values.to(device, copy=True))

    def get_layers(self, key: str, fingerprint: str, device: torch.device | str = "cpu",
                   borrow: bool = False, faults: list[str] | None = None) -> LayerStream | None:
        """Iterable of (layer_idx, k, v), k/v [n_kv_heads, L, head_dim]; None on miss. From a disk or remote
        tier a thread reads ahead; from a memory tier it is a plain iterator in the caller's thread.

        borrow: the caller only reads each layer (e.g. copies it into its own buffer) and never writes to
        it, so a memory tier may hand out its own tensors instead of copies.

        Iteration raises EntryUnavailable (a StoreError) if a later layer proves corrupt: recompute then.
        faults: as in `get` (faults met while opening; a mid-stream fault is raised to the reader).
        """
        found = self._lookup(key, fingerprint, "open_layers", faults)
        if found is None:
            self._stats.lookup(None)
            return None
        i, src = found
        slot = self._slots[i]
        self._stats.lookup(slot.name)
        promote = i > 0 and self.config.promote_on_hit

        def complete(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
            kv = ChunkKV(src.key, src.fingerprint, src.token_ids, src.base_position,
                         torch.stack([k for k, _ in layers]), torch.stack([v for _, v in layers]))
            self._hit(i, kv)

        if not promote and self.catalog is not None:
            self.catalog.touch(key)
        copy = not borrow and (not slot.tier.persistent or promote)
        return LayerStream(src, slot.name, device, self.config.prefetch_depth, copy=copy,
                           threaded=slot.tier.persistent,  # a memory tier's layers are at hand: no thread
                           on_complete=complete if promote else None,
                           on_fault=lambda err: self._fault(key, slot, err))

    def contains(self, key: str) -> bool:
        return any(slot.holds(key) for slot in self._slots)

    def delete(self, key: str) -> None:
        self.flush()  # a queued write must not bring the entry back
        with self._lock:
            for slot in self._slots:
                slot.tier.delete(key)
                slot.forget(key)
            self._pinned.discard(key)
            self._costs.pop(key, None)
        if self.catalog is not None:
            self.catalog.delete(key)

    def pin(self, key: str) -> None:
        """Never evict key from any tier until unpin(key) (pinning may precede the put)."""
        with self._lock:
            self._pinned.add(key)

    def unpin(self, key: str) -> None:
        with self._lock:
            self._pinned.discard(key)

    def stats(self) -> dict[str, object]:
        with self._lock:
            snap = self._stats.snapshot({s.name: s.used for s in self._slots},
                                        {s.name: len(s.sizes) for s in self._slots},
                                        {s.name: s.budget for s in self._slots})
        snap["pinned"] = len(self._pinned)
        return snap

    def tier_of(self, key: str) -> list[str]:
        """Tiers of this process that hold key (for tests and diagnostics)."""
        return [s.name for s in self._slots if s.holds(key)]

    def tier(self, name: str) -> Tier:
        return next(s.tier for s in self._slots if s.name == name)

    def close(self) -> None:
        """Drain the background writer, then close the catalog and the tiers."""
        if self._writer is not None:
            self._writer.close()
        if self.catalog is not None:
            self.catalog.close()
        for slot in self._slots:
            slot.tier.close()

    def __enter__(self) -> "ChunkStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
