"""Ingestion jobs in SQL (SQLAlchemy): the catalog's database, so every replica sees every job.

One row per job: kind, status, stage, progress, times, result (JSON), error, the request that started
it (`params`, JSON, to resume it), and the replica that runs it (`owner`, unique per process) with the
time it last wrote (`updated`). A replica that dies stops updating its rows; `get` reports such a job,
queued or running but silent for longer than `stale_after_s`, as failed with an error naming the owner.
The running replica refreshes `updated` of its active jobs every stale_after_s / 4, so a long model call
does not look like a death. A restarted server need not wait for that: `interrupt` marks the active jobs
of owners it knows are dead (its own host's earlier processes) `interrupted` at once, and `claim` hands
an interrupted or failed job to a new owner, once, to run again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, create_engine, delete, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from chunkcache.store.sql_schema import create_tables

log = logging.getLogger("chunkcache.api")
ACTIVE = ("queued", "running")
RESUMABLE = ("interrupted", "failed")


def now() -> datetime:
    return datetime.now(timezone.utc)


class _Base(DeclarativeBase):
    pass


class JobRow(_Base):
    __tablename__ = "chunkcache_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(128))
    params: Mapped[str | None] = mapped_column(Text)


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite drops the zone


@dataclass(frozen=True)
class JobState:
    """A job as read back; as_dict() is the API's JobInfo."""

    id: str
    kind: str
    status: str
    stage: str | None
    done: int
    total: int
    created: datetime
    finished: datetime | None
    result: dict | None
    error: str | None
    owner: str
    params: dict | None = None
    updated: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("owner", "params", "updated")}


class JobTable:
    """url: a SQLAlchemy URL (the catalog's); None: in memory (a server without persistence)."""

    def __init__(self, url: str | None, stale_after_s: float = 60.0) -> None:
        if url is None:
            self.engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            sqlite = make_url(url).get_backend_name() == "sqlite"
            self.engine = create_engine(url, pool_pre_ping=not sqlite,
                                        connect_args={"timeout": 15} if sqlite else {})
        self.stale_after = timedelta(seconds=stale_after_s)
        self._mutex = threading.Lock()  # one connection in memory: threads must not interleave on it
        create_tables(_Base.metadata, self.engine)
        self._add_params_column()

    def _add_params_column(self) -> None:
        """A table made before jobs were resumable lacks `params`: add it (its old jobs cannot resume)."""
        if "params" in {c["name"] for c in inspect(self.engine).get_columns(JobRow.__tablename__)}:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {JobRow.__tablename__} ADD COLUMN params TEXT"))
        except SQLAlchemyError:  # another replica added it at the same moment
            if "params" not in {c["name"] for c in inspect(self.engine).get_columns(JobRow.__tablename__)}:
                raise

    @contextmanager
    def _session(self, write: bool = True):  # type: ignore[no-untyped-def]
        with self._mutex, Session(self.engine) as s:
            if write:
                with s.begin():
                    yield s
            else:
                yield s

    def insert(self, job_id: str, kind: str, owner: str, params: dict | None = None) -> JobState:
        """params: the job's request (JSON-able), kept to resume it; None: not resumable."""
        t = now()
        row = JobRow(id=job_id, kind=kind, status="queued", stage=None, done=0, total=0, created=t, finished=None,
                     updated=t, result=None, error=None, owner=owner,
                     params=None if params is None else json.dumps(params))
        with self._session() as s:
            s.add(row)
            s.flush()
            return self._state(row, t)

    def set(self, job_id: str, **values: Any) -> None:
        """Update some columns (result: a dict, stored as JSON) and the heartbeat."""
        if "result" in values and values["result"] is not None:
            values["result"] = json.dumps(values["result"])
        with self._session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values, updated=now()))

    def heartbeat(self, owner: str) -> None:
        try:
            with self._session() as s:
                s.execute(update(JobRow).where(JobRow.owner == owner, JobRow.status.in_(ACTIVE))
                          .values(updated=now()))
        except SQLAlchemyError as err:  # the database is away: the next beat tries again
            log.warning("job heartbeat failed: %s", err)

    def get(self, job_id: str) -> JobState | None:
        with self._session(write=False) as s:
            row = s.get(JobRow, job_id)
            return None if row is None else self._state(row, now())

    def interrupt(self, dead: Callable[[str], bool]) -> list[str]:
        """Mark `interrupted` every queued or running job whose owner `dead(owner)` says is gone; their ids."""
        with self._session(write=False) as s:
            rows = s.execute(select(JobRow.id, JobRow.owner, JobRow.stage, JobRow.done, JobRow.total)
                             .where(JobRow.status.in_(ACTIVE))).all()
        marked = []
        for job_id, owner, stage, done, total in rows:
            if not dead(owner):
                continue
            where = f"{stage} ({done}/{total})" if stage else "the queue"
            error = (f"interrupted: the server that ran this job ({owner}) stopped during {where}; "
                     f"POST /jobs/{job_id}/resume runs it again (chunks already precomputed are hits)")
            with self._session() as s:
                hit = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.owner == owner,
                                                     JobRow.status.in_(ACTIVE))
                                .values(status="interrupted", error=error, finished=now(), updated=now()))
            if hit.rowcount:
                marked.append(job_id)
        return marked

    def claim(self, state: JobState, owner: str) -> bool:
        """Hand a job read as interrupted or failed (state) to `owner`, queued afresh; False when another
        replica claimed it first or it changed since it was read."""
        with self._session() as s:
            hit = s.execute(update(JobRow).where(JobRow.id == state.id, JobRow.owner == state.owner,
                                                 JobRow.updated == state.updated)
                            .values(status="queued", owner=owner, stage=None, done=0, total=0, finished=None,
                                    result=None, error=None, updated=now()))
        return bool(hit.rowcount)

    def active(self, owner: str) -> int:
        with self._session(write=False) as s:
            return len(s.scalars(select(JobRow.id).where(JobRow.owner == owner, JobRow.status.in_(ACTIVE))).all())

    def prune(self, keep: int) -> None:
        """Forget all but the `keep` most recently finished jobs."""
        with self._session() as s:
            old = s.scalars(select(JobRow.id).where(JobRow.finished.is_not(None))
                            .order_by(JobRow.finished.desc()).offset(keep)).all()
            if old:
                s.execute(delete(JobRow).where(JobRow.id.in_(old)))

    def _state(self, row: JobRow, t: datetime) -> JobState:
        status, error, finished = row.status, row.error, _utc(row.finished)
        updated = _utc(row.updated)
        if status in ACTIVE and updated is not None and t - updated > self.stale_after:
            status, finished = "failed", updated
            error = (f"replica {row.owner} stopped updating this job at {updated.isoformat()} "
                     f"(killed or restarted during {row.stage or 'the queue'}); submit it again")
        return JobState(row.id, row.kind, status, row.stage, row.done, row.total, _utc(row.created) or t, finished,
                        None if row.result is None else json.loads(row.result), error, row.owner,
                        None if row.params is None else json.loads(row.params), row.updated)

    def close(self) -> None:
        self.engine.dispose()
