"""Real Redis and PostgreSQL servers for the store tests, on free loopback ports.

Binaries: `redis-server` (Debian package redis-server; override with $CHUNKCACHE_REDIS_SERVER) and
PostgreSQL's initdb/pg_ctl (Debian package postgresql; bin dir from $CHUNKCACHE_PG_BINDIR, else the
newest /usr/lib/postgresql/*/bin, else initdb on $PATH). PostgreSQL refuses to run as root, so under
root the server runs as $CHUNKCACHE_PG_USER (default "postgres", created by the Debian package) via
runuser. A missing binary or user raises RuntimeError: the fixtures turn that into a test failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.binary = os.environ.get("CHUNKCACHE_REDIS_SERVER") or shutil.which("redis-server")
        if not self.binary or not os.access(self.binary, os.X_OK):
            raise RuntimeError("redis-server not found: apt-get install redis-server (or set CHUNKCACHE_REDIS_SERVER)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="chunkcache-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        log = open(Path(self.dir) / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"], stdout=log, stderr=subprocess.STDOUT)
        import redis
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(Path(self.dir) / 'redis.log').read_text()}")
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
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bindir() -> Path:
    cand = os.environ.get("CHUNKCACHE_PG_BINDIR")
    if not cand:
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        cand = dirs[-1] if dirs else (os.path.dirname(shutil.which("initdb") or "") or None)
    if not cand or not (Path(cand) / "initdb").exists() or not (Path(cand) / "pg_ctl").exists():
        raise RuntimeError("PostgreSQL initdb/pg_ctl not found: apt-get install postgresql (or set CHUNKCACHE_PG_BINDIR)")
    return Path(cand)


class PostgresServer:
    """initdb into a temp dir, pg_ctl start on 127.0.0.1:<free port>, trust auth, superuser 'chunkcache'."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="chunkcache-pg-"))
        self.data = self.dir / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = os.environ.get("CHUNKCACHE_PG_USER", "postgres")
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                raise RuntimeError(f"running as root and user {user!r} does not exist (set CHUNKCACHE_PG_USER)") from None
            if not shutil.which("runuser"):
                raise RuntimeError("running as root needs runuser (util-linux) to start PostgreSQL as a user")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", user, "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://chunkcache@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        r = subprocess.run([*self.prefix, *args], capture_output=True, text=True, cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stdout}\n{r.stderr}")

    def start(self) -> "PostgresServer":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "chunkcache", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                  "-w", "-t", "60", "-o", opts, "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
