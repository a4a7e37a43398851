"""Jobs of a server process that was killed (kill -9) read `interrupted` as soon as a registry starts on the
same database on this host, not a minute later; a live process's jobs are left alone; an interrupted job
resumes once, under its id, from the request it was started with. The killed owners are real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chunkcache.api.job_table import JobTable
from chunkcache.api.jobs import JobRegistry, NotResumable, dead_on_this_host, owner_name
from chunkcache.api.worker import QueueFull

CHILD = textwrap.dedent("""
    import sys, threading, time
    from chunkcache.api.jobs import JobRegistry
    jobs = JobRegistry(4, 16, sys.argv[1], stale_after_s=3600)
    def work(job):
        job.progress("precompute", 3, 10)
        threading.Event().wait()
    job = jobs.start("ingest", work, params={"documents": ["a"]})
    while jobs.get(job.id).done != 3:
        time.sleep(0.01)
    print(job.id, flush=True)
    threading.Event().wait()
""")


def _owner_process(url: str) -> tuple[subprocess.Popen[str], str]:
    """A process with a registry on url and one running job (3/10 precomputed); returns it and the job id."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True)
    job_id = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert job_id, "the owner process did not start its job"
    return proc, job_id


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.sqlite'}"


def test_killed_owner_jobs_are_interrupted_at_start_up(url: str) -> None:
    killed, killed_job = _owner_process(url)
    alive, alive_job = _owner_process(url)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        t0 = time.monotonic()
        jobs = JobRegistry(4, 16, url, stale_after_s=3600)  # a heartbeat this slow never reads as failed
        state = jobs.get(killed_job)
        assert time.monotonic() - t0 < 5
        assert jobs.interrupted == [killed_job]
        assert state.status == "interrupted" and state.finished is not None
        assert state.error.startswith("interrupted: the server that ran this job")
        assert "precompute (3/10)" in state.error
        assert f"POST /jobs/{killed_job}/resume" in state.error
        assert jobs.get(alive_job).status == "running"  # its process is alive: not touched
        assert JobRegistry(4, 16, url).interrupted == []  # marked once
        jobs.close()
    finally:
        alive.kill()
        alive.wait(10)


def test_interrupted_job_resumes_once_from_its_request(url: str) -> None:
    killed, job_id = _owner_process(url)
    killed.kill()
    killed.wait(10)
    jobs = JobRegistry(1, 16, url)
    seen: list[dict] = []

    def build(kind: str, params: dict):  # type: ignore[no-untyped-def]
        seen.append({"kind": kind, **params})
        return lambda job: (job.progress("precompute", 10, 10), {"chunks": 10})[1]

    job = jobs.resume(job_id, build)
    assert job.id == job_id and seen == [{"kind": "ingest", "documents": ["a"]}]
    deadline = time.monotonic() + 10
    while (state := jobs.get(job_id)).status != "done":
        assert time.monotonic() < deadline, state
        time.sleep(0.01)
    assert state.result == {"chunks": 10} and state.error is None and state.owner == jobs.owner
    with pytest.raises(NotResumable, match="is done"):
        jobs.resume(job_id, build)
    with pytest.raises(LookupError):
        jobs.resume("no-such-job", build)
    jobs.close()


def test_resume_claims_once_and_respects_the_bound(url: str) -> None:
    killed, job_id = _owner_process(url)
    killed.kill()
    killed.wait(10)
    table = JobTable(url)
    a, b = JobRegistry(1, 16, url), JobRegistry(4, 16, url)
    state = table.get(job_id)
    assert table.claim(state, a.owner) and not table.claim(state, b.owner)  # a read, then claimed twice
    table.set(job_id, status="interrupted")
    table.insert("plain", "ingest", b.owner)  # started without its request kept
    table.set("plain", status="failed")
    with pytest.raises(NotResumable, match="without its request"):
        b.resume("plain", lambda kind, params: lambda job: {})
    blocker = a.start("ingest", lambda job: time.sleep(1) or {})
    with pytest.raises(QueueFull):
        a.resume(job_id, lambda kind, params: lambda job: {})
    assert table.get(job_id).status == "interrupted" and a.get(blocker.id).status in ("queued", "running")
    for reg in (a, b):
        reg.close()
    table.close()


def test_dead_on_this_host_reads_pid_and_start_time() -> None:
    me = owner_name()
    host, pid, start, _ = me.split(":")
    assert not dead_on_this_host(me, me)
    assert not dead_on_this_host(f"{host}:{pid}:{start}:sibling", me)  # another registry of this process
    assert dead_on_this_host(f"{host}:{pid}:{int(start) - 100}:old", me)  # this pid, an earlier process
    assert dead_on_this_host(f"{host}:{pid}:old", me)  # this pid named the old way: an earlier process
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert dead_on_this_host(f"{host}:{done.stdout.strip()}:{start}:gone", me)
    assert not dead_on_this_host(f"other-host-{host}:{done.stdout.strip()}:{start}:gone", me)  # heartbeat's job


def test_a_jobs_table_from_before_resuming_gains_the_column(url: str) -> None:
    from sqlalchemy import create_engine, text

    old = create_engine(url)
    with old.begin() as db:
        db.execute(text("CREATE TABLE chunkcache_jobs (id VARCHAR(64) PRIMARY KEY, kind VARCHAR(32), "
                        "status VARCHAR(16), stage VARCHAR(32), done INTEGER, total INTEGER, created DATETIME, "
                        "finished DATETIME, updated DATETIME, result TEXT, error TEXT, owner VARCHAR(128))"))
        db.execute(text("INSERT INTO chunkcache_jobs VALUES ('old', 'ingest', 'running', 'precompute', 1, 9, "
                        "'2026-01-01 00:00:00', NULL, '2026-01-01 00:00:00', NULL, NULL, 'gone-host:1:x')"))
    old.dispose()
    jobs = JobRegistry(4, 16, url, stale_after_s=1)
    assert jobs.get("old").status == "failed"  # another host's owner: its stale heartbeat tells
    with pytest.raises(NotResumable, match="without its request"):
        jobs.resume("old", lambda kind, params: lambda job: {})
    job = jobs.start("ingest", lambda job: {}, params={"documents": []})
    assert jobs.table.get(job.id).params == {"documents": []}
    jobs.close()
