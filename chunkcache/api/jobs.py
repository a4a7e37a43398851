"""Background jobs (document ingestion) with an id and progress; a bounded number waits or runs."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from chunkcache.api.worker import QueueFull


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Job:
    id: str
    kind: str
    status: str = "queued"  # queued | running | done | failed
    stage: str | None = None
    done: int = 0
    total: int = 0
    created: datetime = field(default_factory=_now)
    finished: datetime | None = None
    result: dict | None = None
    error: str | None = None

    def progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JobRegistry:
    """Runs jobs one at a time on their own thread (their model calls go through the model worker).

    max_active: queued + running jobs; one more raises QueueFull. keep: finished jobs remembered.
    """

    def __init__(self, max_active: int, keep: int) -> None:
        self.max_active = max_active
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkcache-jobs")

    def start(self, kind: str, fn: Callable[[Job], dict]) -> Job:
        with self._lock:
            active = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if active >= self.max_active:
                raise QueueFull(f"{active} jobs already queued or running (limit {self.max_active})")
            job = Job(uuid.uuid4().hex, kind)
            self._jobs[job.id] = job
            done = [k for k, j in self._jobs.items() if j.finished is not None]
            for k in done[:max(0, len(self._jobs) - self.keep)]:
                del self._jobs[k]
        self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[Job], dict]) -> None:
        job.status = "running"
        try:
            job.result = fn(job)
            job.status = "done"
        except Exception as err:  # noqa: BLE001 - recorded on the job, read by GET /jobs/{id}
            job.error = f"{type(err).__name__}: {err}"
            job.status = "failed"
        job.finished = _now()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
