"""Model worker, job registry and config: the pieces under the server, without HTTP (the worker on the tiny llama)."""

from __future__ import annotations

import threading
import time

import pytest

from chunkcache.api.config import ServerConfig
from chunkcache.api.jobs import JobRegistry
from chunkcache.api.worker import ModelWorker, QueueFull, WorkerClosed


def test_api_worker_serialises_and_refuses_when_full() -> None:
    from chunkcache.runner.runner import ModelRunner
    from chunkcache.serving import Scheduler, SchedulerConfig
    from tiny_models import tiny_llama

    worker = ModelWorker(Scheduler(ModelRunner(tiny_llama(), kernels="torch"), SchedulerConfig(max_waiting=1)))
    gate, started = threading.Event(), threading.Event()
    order: list[int] = []
    running = worker.submit(lambda: (started.set(), gate.wait(10), order.append(1), "first")[-1])
    assert started.wait(10)
    queued = worker.submit(lambda: (order.append(2), "second")[-1])
    with pytest.raises(QueueFull):
        worker.submit(lambda: "third")
    time.sleep(0.05)
    gate.set()
    a, b = running.result(10), queued.result(10)
    assert (a.value, b.value, order) == ("first", "second", [1, 2])
    assert a.run_s >= 0.05 and b.queue_s >= a.run_s * 0.9  # the second waited for the first
    err = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        err.result(10)
    assert worker.call(lambda: 42) == 42  # an exception does not stop the worker
    worker.close()
    with pytest.raises(WorkerClosed):
        worker.submit(lambda: None)


def test_api_jobs_progress_failure_and_bound() -> None:
    jobs = JobRegistry(max_active=1, keep=2)
    gate = threading.Event()

    def work(job):  # type: ignore[no-untyped-def]
        job.progress("precompute", 1, 2)
        gate.wait(10)
        job.progress("precompute", 2, 2)
        return {"chunks": 2}

    job = jobs.start("ingest", work)
    with pytest.raises(QueueFull):
        jobs.start("ingest", work)
    deadline = time.monotonic() + 5
    while job.done != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert jobs.get(job.id).status == "running" and job.stage == "precompute"
    gate.set()
    while job.status == "running":
        time.sleep(0.01)
    assert (job.status, job.result, job.done, job.total) == ("done", {"chunks": 2}, 2, 2) and job.finished
    bad = jobs.start("ingest", lambda job: {}["missing"])
    while bad.finished is None:
        time.sleep(0.01)
    assert bad.status == "failed" and "KeyError" in bad.error
    for _ in range(3):
        jobs.start("ingest", lambda job: {})
        time.sleep(0.05)
    assert jobs.get(job.id) is None  # only `keep` finished jobs are remembered
    jobs.close()


@pytest.mark.parametrize(("kw", "field"), [({"max_chunks": 0}, "max_chunks"), ({"max_queue": 0}, "max_queue"),
                                           ({"api_key": " "}, "api_key"), ({"port": 70000}, "port")])
def test_api_config_validation(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ServerConfig(**kw)


def test_api_config_key_from_env(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CHUNKCACHE_API_KEY", "s3cret")
    assert ServerConfig.from_env().api_key == "s3cret"
    assert ServerConfig.from_env(api_key="given").api_key == "given"


def test_api_config_layers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """flags > $CHUNKCACHE_API_KEY > the file's [server] table > defaults; the engine config sits beside."""
    from chunkcache.config import ConfigError, EngineConfig

    monkeypatch.delenv("CHUNKCACHE_API_KEY", raising=False)
    engine = EngineConfig(store="memory")
    table = {"port": 9001, "max_queue": 3, "api_key": "from-file"}
    cfg = ServerConfig.from_layers(engine, table, {})
    assert (cfg.port, cfg.max_queue, cfg.api_key, cfg.host, cfg.engine, cfg.persistent) == \
        (9001, 3, "from-file", "127.0.0.1", engine, False)
    monkeypatch.setenv("CHUNKCACHE_API_KEY", "from-env")
    assert ServerConfig.from_layers(engine, table, {}).api_key == "from-env"
    cfg = ServerConfig.from_layers(engine, table, {"api_key": "from-flag", "port": 9002})
    assert (cfg.api_key, cfg.port, cfg.max_queue) == ("from-flag", 9002, 3)
    with pytest.raises(ConfigError, match="^server.prot: unknown key"):
        ServerConfig.from_layers(engine, {"prot": 1}, {})
    with pytest.raises(ConfigError, match="max_queue must be >= 1"):
        ServerConfig.from_layers(engine, {"max_queue": 0}, {})


def test_api_jobs_are_shared_through_sql_and_a_dead_owner_reads_as_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two registries over one database (two replicas): each reads the other's jobs; a job whose owner
    stops writing is reported failed once stale."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    a, b = JobRegistry(4, 8, url, stale_after_s=0.6), JobRegistry(4, 8, url, stale_after_s=0.6)
    job = a.start("ingest", lambda job: {"chunks": 1})
    deadline = time.monotonic() + 5
    while (seen := b.get(job.id)).status != "done":
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    assert seen.result == {"chunks": 1} and seen.finished is not None
    gate = threading.Event()
    slow = a.start("ingest", lambda job: (job.progress("precompute", 1, 3), gate.wait(5), {})[-1])
    time.sleep(1.0)  # longer than stale_after_s: a's heartbeat keeps its running job alive
    assert b.get(slow.id).status == "running"
    a._stop.set()  # a "dies": its heartbeat stops (its thread is still blocked in the job)
    time.sleep(1.0)
    dead = b.get(slow.id)
    assert dead.status == "failed" and "stopped updating this job" in dead.error and "precompute" in dead.error
    gate.set()
    a.close()
    b.close()
    again = JobRegistry(4, 8, url)  # a restart: the finished jobs are still there
    assert again.get(job.id).status == "done" and again.get("nope") is None
    again.close()


def test_api_worker_returns_freed_heap_when_idle() -> None:
    """After the last queued call the worker trims the heap once; not between calls still waiting."""
    import threading

    from chunkcache.api.worker import ModelWorker
    from chunkcache.runner.runner import ModelRunner
    from chunkcache.serving import Scheduler, SchedulerConfig
    from tiny_models import tiny_llama

    sched = Scheduler(ModelRunner(tiny_llama(), kernels="torch"), SchedulerConfig(max_waiting=4))
    worker, trims, gate = ModelWorker(sched), [], threading.Event()
    sched._trim = lambda: trims.append(worker.depth)
    first = worker.submit(gate.wait)
    rest = [worker.submit(lambda i=i: i) for i in range(2)]
    gate.set()
    assert [f.result(5).value for f in rest] == [0, 1] and first.result(5).value is True
    worker.close()
    assert trims == [0]  # once, with nothing left waiting
