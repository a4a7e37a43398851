"""Background jobs (document ingestion) with an id and progress; a bounded number waits or runs.

Jobs are rows of a SQL table (`job_table.py`, the catalog's database), so any replica answers
GET /jobs/{id} for a job another replica runs, and after any restart. `Job` is the live handle the
work function reports progress through; every change is written to the table.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from chunkcache.api.job_table import JobState, JobTable, now
from chunkcache.api.worker import QueueFull

log = logging.getLogger("chunkcache.api")


@dataclass
class Job:
    id: str
    kind: str
    table: JobTable = field(repr=False)
    status: str = "queued"  # queued | running | done | failed
    stage: str | None = None
    done: int = 0
    total: int = 0
    created: datetime = field(default_factory=now)
    finished: datetime | None = None
    result: dict | None = None
    error: str | None = None

    def progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total
        self.table.set(self.id, stage=stage, done=done, total=total)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "table"}


class JobRegistry:
    """Runs jobs one at a time on their own thread (their model calls go through the model worker).

    max_active: this replica's queued + running jobs; one more raises QueueFull. keep: finished jobs
    remembered (over all replicas). url: the jobs' SQL database (None: in memory).
    """

    def __init__(self, max_active: int, keep: int, url: str | None = None, stale_after_s: float = 60.0) -> None:
        self.max_active = max_active
        self.keep = keep
        self.table = JobTable(url, stale_after_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkcache-jobs")
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(stale_after_s / 4,), daemon=True,
                                      name="chunkcache-job-heartbeat")
        self._beat.start()

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.table.heartbeat(self.owner)

    def start(self, kind: str, fn: Callable[[Job], dict]) -> Job:
        with self._lock:
            active = self.table.active(self.owner)
            if active >= self.max_active:
                raise QueueFull(f"{active} jobs already queued or running (limit {self.max_active})")
            state = self.table.insert(uuid.uuid4().hex, kind, self.owner)
            self.table.prune(self.keep)
        job = Job(state.id, kind, self.table, created=state.created)
        self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[Job], dict]) -> None:
        job.status = "running"
        try:
            self.table.set(job.id, status="running")
            job.result = fn(job)
            job.status = "done"
        except Exception as err:  # noqa: BLE001 - recorded on the job, read by GET /jobs/{id}
            job.error = f"{type(err).__name__}: {err}"
            job.status = "failed"
        job.finished = now()
        try:
            self.table.set(job.id, status=job.status, result=job.result, error=job.error, finished=job.finished)
        except SQLAlchemyError as err:  # the database is away: the row goes stale and reads as failed
            log.error("job %s finished (%s) but its row could not be written: %s", job.id, job.status, err)

    def get(self, job_id: str) -> JobState | None:
        return self.table.get(job_id)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.table.close()
