"""Pipelined layer-by-layer loading: a background thread reads layer l+1.. while the caller uses l
(threaded=False, for memory tiers: each layer is read in the caller's thread when asked for).

Iterating a LayerStream yields (layer_idx, k, v) in order, k and v [n_kv_heads, L, head_dim] on the
requested device, owned by the caller (never aliases of the cache). At most `depth` layers are read
ahead. If a layer fails verification part-way, iteration raises EntryUnavailable (a StoreError)
after the layers already yielded: the caller must then recompute the chunk. Leaving the loop early
or calling close() stops the reader thread and releases the file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch

from chunkcache.store.errors import EntryUnavailable, Reason
from chunkcache.store.tier import LayerSource

_DONE = object()
Layer = tuple[int, torch.Tensor, torch.Tensor]


class LayerStream:
    def __init__(self, source: LayerSource, tier: str, device: torch.device | str, depth: int = 2,
                 *, copy: bool, threaded: bool = True,
                 on_complete: Callable[[list[tuple[torch.Tensor, torch.Tensor]]], None] | None = None,
                 on_fault: Callable[[EntryUnavailable], None] | None = None) -> None:
        """copy: hand out copies, because source tensors may alias the cache (memory tiers) or be kept for
        promotion (on_complete); False only for a caller that copies each layer before the next one and
        never writes to it (borrowed tensors).
        on_complete(layers): called with every layer's source tensors after a full clean pass
        (used to promote the entry); on_fault(err): called once when a layer is unusable.
        threaded: False reads each layer in the caller's thread when it is asked for (memory tiers)."""
        self.source = source
        self.tier = tier
        self.key = source.key
        self.fingerprint = source.fingerprint
        self.token_ids = source.token_ids
        self.base_position = source.base_position
        self.n_layers = source.n_layers
        self.device = torch.device(device)
        self._copy = copy
        self._threaded = threaded
        self._on_complete = on_complete
        self._on_fault = on_fault
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._iterated = False

    def _offer(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _layers(self) -> Iterator[Layer]:
        """Read, move and yield every layer; on_complete after a clean pass."""
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i in range(self.n_layers):
            k, v = self.source.read(i)
            if self._on_complete is not None:
                kept.append((k, v))
            nb = k.device.type == "cpu" and self.device.type == "cuda" and k.is_pinned()
            yield i, k.to(self.device, non_blocking=nb, copy=self._copy), v.to(self.device, non_blocking=nb,
                                                                                copy=self._copy)
        if self._on_complete is not None:
            self._on_complete(kept)

    def _run(self) -> None:
        try:
            for item in self._layers():
                if self._stop.is_set() or not self._offer(item):
                    return
            self._offer(_DONE)
        except BaseException as e:  # handed to the consumer, re-raised there
            self._offer(e)

    def _fail(self, item: BaseException) -> EntryUnavailable:
        err = item if isinstance(item, EntryUnavailable) else \
            EntryUnavailable(Reason.IO_ERROR, f"{type(item).__name__}: {item}", drop=False)  # transient: keep it
        if self._on_fault is not None:
            self._on_fault(err)
        return err

    def _inline(self) -> Iterator[Layer]:
        try:
            yield from self._layers()
        except Exception as e:  # noqa: BLE001 - re-raised as a StoreError
            raise self._fail(e) from e
        finally:
            self.close()

    def __iter__(self) -> Iterator[Layer]:
        if self._thread is not None or self._closed or self._iterated:
            raise RuntimeError("a LayerStream can be iterated once")
        self._iterated = True
        if not self._threaded:
            return self._inline()
        return self._threaded_iter()

    def _threaded_iter(self) -> Iterator[Layer]:
        self._thread = threading.Thread(target=self._run, name=f"chunkcache-prefetch-{self.key[:8]}", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise self._fail(item)
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.source.close()

    def __del__(self) -> None:
        if not self._closed and self._thread is None and not self._iterated:
            self._closed = True
            self.source.close()

    def __enter__(self) -> "LayerStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
