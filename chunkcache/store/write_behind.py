"""A bounded background writer: slow-tier writes leave the request path.

Jobs are callables run in order on one daemon thread. The queue holds at most `max_pending` jobs
(memory stays bounded: each job holds one chunk's KV). `submit(job, timeout)` waits at most timeout
seconds for room and returns False when the queue is still full (the caller drops and counts the
write; timeout None waits for room). `flush` waits until every submitted job has run; `close`
flushes, then stops the thread. A job that raises is logged and handed to `on_error`; the writer
keeps going.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("chunkcache.store")

_STOP = object()


class WriteBehind:
    def __init__(self, max_pending: int, on_error: Callable[[BaseException], None] | None = None,
                 name: str = "chunkcache-write-behind") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._q: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._on_error = on_error
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is _STOP:
                    return
                job()  # type: ignore[operator]
            except BaseException as err:  # noqa: BLE001 - reported, the writer keeps going
                log.warning("background write failed: %s: %s", type(err).__name__, err)
                if self._on_error is not None:
                    self._on_error(err)
            finally:
                self._q.task_done()

    @property
    def pending(self) -> int:
        return self._q.unfinished_tasks

    def submit(self, job: Callable[[], None], timeout: float | None = None) -> bool:
        """Queue job, waiting at most timeout s (None: until there is room) while `max_pending` jobs wait.
        False: still full, job not queued. After close, runs it inline (True)."""
        with self._lock:  # close() waits for a blocked put: no job lands behind the stop marker
            if not self._closed:
                try:
                    self._q.put(job, timeout=timeout)
                except queue.Full:
                    return False
                return True
        job()
        return True

    def flush(self) -> None:
        """Return once every job submitted so far has run."""
        self._q.join()

    def close(self) -> None:
        """Flush and stop the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._q.put(_STOP)
        self._thread.join()
