"""The LMCache bridge under server faults, against a real `python -m lmcache.v1.server`: a server that stops
answering (SIGSTOP: the kernel still accepts the connection) or dies (SIGKILL) makes every call fail within
timeout_s with LMCacheUnavailable, and the bridge's thread and socket are closed on every error path,
the constructor's included. Keys: the bridge's equal LMCache's public `process_tokens` keys (the test that
pins its use of LMCache's private hash function to the installed version)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from servers import free_port

from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.store import lmcache_tier
from chunkcache.store.lmcache_tier import LMCacheBridge, LMCacheUnavailable

pytestmark = pytest.mark.lmcache

PREFIX = tuple(range(1, 9))
CHUNK = tuple(range(20, 28))


class LMCacheServer:
    """A private `lmcache.v1.server` on a free port, to pause and kill."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"lmcache://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "lmcache.v1.server", "127.0.0.1", str(self.port), "cpu"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "lmcache.v1.server did not start"
                time.sleep(0.1)

    def pause(self) -> None:
        """SIGSTOP, then wait until every thread has stopped. kill() returns before the group stop reaches the
        server's connection threads, so on a busy machine a thread could still answer one more call."""
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not all(_state(f"/proc/{self.proc.pid}/task/{t}/stat") == "T"
                      for t in os.listdir(f"/proc/{self.proc.pid}/task")):
            assert time.monotonic() < deadline, "lmcache.v1.server did not stop"
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)


def _state(stat_path: str) -> str:
    """A thread's state letter from /proc/<pid>/task/<tid>/stat ("T": stopped); a thread gone counts as "T"."""
    try:
        with open(stat_path) as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "T"


@pytest.fixture()
def server():  # type: ignore[no-untyped-def]
    s = LMCacheServer()
    yield s
    s.stop()


def bridge(url: str, runner, timeout_s: float = 1.0) -> LMCacheBridge:  # type: ignore[no-untyped-def]
    return LMCacheBridge(url, model_name="faults", fingerprint=runner.fingerprint, n_layers=runner.n_layers,
                         n_kv_heads=runner.n_kv_heads, head_dim=runner.head_dim, timeout_s=timeout_s)


def _threads() -> int:
    return sum(t.name == "chunkcache-lmcache" and t.is_alive() for t in threading.enumerate())


def _closed(b: LMCacheBridge) -> bool:
    return b.client.client_socket.fileno() == -1 and not b._thread.is_alive()


def test_a_paused_server_times_out_every_call_and_closes_the_bridge(server, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    kv = ChunkSource(tiny_runner, DictStore(), PREFIX).compute(CHUNK, PREFIX)
    b = bridge(server.url, tiny_runner)
    b.put(kv, PREFIX)
    server.pause()
    t0 = time.monotonic()
    with pytest.raises(LMCacheUnavailable, match=r"GET: the LMCache server at .* failed \(no answer within 1s\)"):
        b.get(CHUNK, PREFIX)
    assert time.monotonic() - t0 < 3 and _closed(b)
    with pytest.raises(LMCacheUnavailable, match="is closed"):  # no call on a connection in an unknown state
        b.put(kv, PREFIX)
    b.close()  # again: nothing to do


def test_constructor_failing_after_connect_leaves_no_thread_or_socket(server, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    before = _threads()
    server.pause()  # connects (the kernel's backlog), never answers the model check
    t0 = time.monotonic()
    with pytest.raises(LMCacheUnavailable, match=r"GET: .*\(no answer within 1s\)"):
        bridge(server.url, tiny_runner)
    assert time.monotonic() - t0 < 4 and _threads() == before
    server.proc.send_signal(signal.SIGCONT)
    bridge(server.url, tiny_runner).close()  # the server answers again: a new bridge works
    assert _threads() == before


def test_a_killed_server_fails_fast_and_closes(server, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    b = bridge(server.url, tiny_runner, timeout_s=30)
    server.proc.kill()
    server.proc.wait(10)
    t0 = time.monotonic()
    with pytest.raises(LMCacheUnavailable, match="GET: the LMCache server at .* failed"):
        b.get(CHUNK, PREFIX)
    assert time.monotonic() - t0 < 5 and _closed(b)
    with pytest.raises(LMCacheUnavailable, match="cannot reach the LMCache server"):
        bridge(server.url, tiny_runner)


def test_bad_timeout_and_other_lmcache_versions_are_refused(server, tiny_runner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="timeout_s: must be > 0"):
        bridge(server.url, tiny_runner, timeout_s=0)
    monkeypatch.setattr(lmcache_tier, "LMCACHE_VERSION", "0.0.1")  # stands for another installed version
    with pytest.raises(ImportError, match="tested with lmcache 0.0.1 only .* found 0.5.6"):
        bridge(server.url, tiny_runner)


def test_keys_equal_lmcache_process_tokens_keys(server, tiny_runner) -> None:  # type: ignore[no-untyped-def]
    """LMCache's own prefix-chained keys (chunk_size = the context's length) are the bridge's keys."""
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.token_database import ChunkedTokenDatabase

    b = bridge(server.url, tiny_runner)
    db = ChunkedTokenDatabase(LMCacheEngineConfig.from_defaults(chunk_size=len(PREFIX)), b.metadata)
    (_, _, k_prefix), (_, _, k_chunk) = db.process_tokens(torch.tensor(PREFIX + CHUNK))
    assert b.key(PREFIX) == k_prefix and b.key(CHUNK, PREFIX) == k_chunk
    assert b.key(CHUNK) != k_chunk
    whole = ChunkedTokenDatabase(LMCacheEngineConfig.from_defaults(chunk_size=256), b.metadata)
    long_chunk = tuple(range(3, 259))  # one whole LMCache chunk (a partial one gets no key)
    (_, _, k_long), = whole.process_tokens(list(long_chunk))
    assert b.key(long_chunk) == k_long
    b.close()
