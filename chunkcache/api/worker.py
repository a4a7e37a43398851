"""Exclusive model calls for the HTTP layer: chunk precompute, ingestion, request preparation.

They run on the scheduler's thread between its steps (`Scheduler.submit_call`), so nothing else uses the
runner while they do; generation itself goes through the scheduler as sequences (api/generation.py).
`submit(fn)` returns a concurrent.futures.Future whose result carries how long the call waited and how long
it ran; a full queue refuses at once (QueueFull -> HTTP 429). The scheduler hands freed heap back to the OS
when it runs idle (glibc `malloc_trim`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from chunkcache.serving.scheduler import QueueFull, Scheduler, Timed, WorkerClosed

__all__ = ["ModelWorker", "QueueFull", "Timed", "WorkerClosed"]


class ModelWorker:
    """The scheduler seen as a queue of exclusive calls."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    @property
    def depth(self) -> int:
        """Requests and calls waiting, plus sequences running (the load the next request queues behind)."""
        return self.scheduler.depth + self.scheduler.active

    def submit(self, fn: Callable[[], Any], block: bool = False, timeout: float | None = None) -> "Future[Timed]":
        """Queue fn. block=False: raise QueueFull when the queue is full; True: wait for a slot."""
        return self.scheduler.submit_call(fn, block, timeout)

    def call(self, fn: Callable[[], Any], poll_s: float = 0.5) -> Any:
        """Run fn on the scheduler thread, waiting for a queue slot and for the result (for background jobs).
        Raises WorkerClosed if the scheduler shuts down before running it."""
        return self.scheduler.call(fn, poll_s)

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued and running, stop the thread."""
        self.scheduler.close(timeout)
