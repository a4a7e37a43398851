"""One model worker thread: every engine call runs here, one at a time, from a bounded queue.

A full queue refuses new work at once (QueueFull -> HTTP 429) instead of growing memory. When the
queue runs empty the worker hands freed heap back to the OS (glibc `malloc_trim`): every request
allocates and frees hundreds of MB of KV in varied sizes, and without it a long-running server's RSS
creeps up by fragmentation although the store stays within its budgets.
`submit(fn)` returns a concurrent.futures.Future; the result carries how long the call waited
and how long it ran, so the HTTP layer can report its own overhead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from chunkcache.runner.heap import heap_trimmer


class QueueFull(RuntimeError):
    pass


class WorkerClosed(RuntimeError):
    pass


@dataclass
class Timed:
    value: Any
    queue_s: float
    run_s: float


class ModelWorker:
    def __init__(self, max_queue: int, name: str = "chunkcache-model") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.busy = False
        self._trim = heap_trimmer()

    @property
    def depth(self) -> int:
        """Calls waiting (not counting the running one)."""
        return self._queue.qsize()

    def submit(self, fn: Callable[[], Any], block: bool = False, timeout: float | None = None) -> "Future[Timed]":
        """Queue fn. block=False: raise QueueFull when the queue is full; True: wait for a slot."""
        if self._closed.is_set():
            raise WorkerClosed("the model worker is shutting down")
        fut: Future[Timed] = Future()
        try:
            self._queue.put((fn, fut, time.perf_counter()), block=block, timeout=timeout)
        except queue.Full:
            raise QueueFull(f"model queue full ({self._queue.maxsize} waiting)") from None
        return fut

    def call(self, fn: Callable[[], Any], poll_s: float = 0.5) -> Any:
        """Run fn on the worker, waiting for a queue slot and for the result (for background jobs).
        Raises WorkerClosed if the worker shuts down before running it."""
        while True:
            try:
                fut = self.submit(fn, block=True, timeout=poll_s)
                break
            except QueueFull:
                continue
        while True:
            try:
                return fut.result(timeout=poll_s).value
            except FutureTimeout:
                if self._closed.is_set() and not self._thread.is_alive():
                    fut.cancel()
                    raise WorkerClosed("the model worker shut down before running the call") from None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut, queued = item
            if not fut.set_running_or_notify_cancel():
                continue
            start = time.perf_counter()
            self.busy = True
            try:
                value = fn()
            except BaseException as err:  # noqa: BLE001 - handed to the waiting request
                fut.set_exception(err)
            else:
                fut.set_result(Timed(value, start - queued, time.perf_counter() - start))
            finally:
                self.busy = False
            if self._queue.empty():
                self._trim()  # idle: return freed heap to the OS, off every request's critical path

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)
        while True:  # anything that slipped in after the stop marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_exception(WorkerClosed("the model worker shut down before running the call"))
