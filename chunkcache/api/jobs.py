"""Background jobs (document ingestion) with an id and progress; a bounded number waits or runs.

Jobs are rows of a SQL table (`job_table.py`, the catalog's database), so any replica answers
GET /jobs/{id} for a job another replica runs, and after any restart. `Job` is the live handle the
work function reports progress through; every change is written to the table.

A registry's owner name is `host:pid:start:token` (start: the process's start time). At start-up the
registry marks `interrupted` the active jobs of every earlier owner on this host whose process is gone
(a kill -9, a crash, a restart), at once; other hosts' dead replicas are found by their stale heartbeat.
`resume` runs an interrupted or failed job again from the request it was started with.
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

import psutil
from sqlalchemy.exc import SQLAlchemyError

from chunkcache.api.job_table import RESUMABLE, JobState, JobTable, now
from chunkcache.api.worker import QueueFull

log = logging.getLogger("chunkcache.api")


@dataclass
class Job:
    id: str
    kind: str
    table: JobTable = field(repr=False)
    status: str = "queued"  # queued | running | done | failed | interrupted (its server died)
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


class NotResumable(Exception):
    """The job is active or done, was started without its request, or another replica resumed it first."""


def owner_name() -> str:
    """host:pid:start:token for this process (start: its start time, so a reused pid is a new owner)."""
    start = int(psutil.Process().create_time())
    return f"{socket.gethostname()}:{os.getpid()}:{start}:{uuid.uuid4().hex[:8]}"


def dead_on_this_host(owner: str, me: str) -> bool:
    """True when `owner` is a process of this host that is gone: its pid runs no process, or one started at
    another time (a reused pid; a container restarted as the same pid). Other hosts' owners: False."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or owner == me or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    try:
        started = int(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to inspect: alive as far as we can tell
        return False
    if len(parts) == 4 and parts[2].isdigit():
        return abs(started - int(parts[2])) > 1
    return pid == os.getpid()  # an owner named before start times were: this pid is this process now


class JobRegistry:
    """Runs jobs one at a time on their own thread (their model calls go through the model worker).

    max_active: this replica's queued + running jobs; one more raises QueueFull. keep: finished jobs
    remembered (over all replicas). url: the jobs' SQL database (None: in memory).
    """

    def __init__(self, max_active: int, keep: int, url: str | None = None, stale_after_s: float = 60.0) -> None:
        self.max_active = max_active
        self.keep = keep
        self.table = JobTable(url, stale_after_s)
        self.owner = owner_name()
        self.interrupted = self.table.interrupt(lambda owner: dead_on_this_host(owner, self.owner))
        if self.interrupted:
            log.warning("%d job(s) interrupted by a restart, marked so (POST /jobs/{id}/resume runs one again): %s",
                        len(self.interrupted), ", ".join(self.interrupted))
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkcache-jobs")
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(stale_after_s / 4,), daemon=True,
                                      name="chunkcache-job-heartbeat")
        self._beat.start()

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.table.heartbeat(self.owner)

    def start(self, kind: str, fn: Callable[[Job], dict], params: dict | None = None) -> Job:
        """params: the request (JSON-able) that `resume` rebuilds fn from; None: not resumable."""
        with self._lock:
            self._check_room()
            state = self.table.insert(uuid.uuid4().hex, kind, self.owner, params)
            self.table.prune(self.keep)
        job = Job(state.id, kind, self.table, created=state.created)
        self._pool.submit(self._run, job, fn)
        return job

    def resume(self, job_id: str, build: Callable[[str, dict], Callable[[Job], dict]]) -> Job:
        """Run an interrupted or failed job again under this replica, same id; build(kind, params) makes its
        work function. LookupError: no such job; NotResumable: see the class."""
        with self._lock:
            state = self.table.get(job_id)
            if state is None:
                raise LookupError(job_id)
            if state.status not in RESUMABLE:
                raise NotResumable(f"job {job_id} is {state.status}: only interrupted or failed jobs resume")
            if state.params is None:
                raise NotResumable(f"job {job_id} was started without its request kept: submit it again")
            fn = build(state.kind, state.params)
            self._check_room()
            if not self.table.claim(state, self.owner):
                raise NotResumable(f"job {job_id} changed while resuming it (another replica resumed it)")
        job = Job(state.id, state.kind, self.table, created=state.created)
        self._pool.submit(self._run, job, fn)
        return job

    def _check_room(self) -> None:
        active = self.table.active(self.owner)
        if active >= self.max_active:
            raise QueueFull(f"{active} jobs already queued or running (limit {self.max_active})")

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
