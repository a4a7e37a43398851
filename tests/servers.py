"""Real Redis and PostgreSQL servers for the tests, on free loopback ports, without root or apt.

Redis: `chunkcache.bench.redis_server` (shared with `bench replicas`); `chunkcache serve`:
`chunkcache.bench.live_server.LiveServer`. PostgreSQL binaries (initdb, pg_ctl), first found wins:
$CHUNKCACHE_PG_BIN (a bin dir), the one inside the `pgserver` wheel (a test extra), the newest
/usr/lib/postgresql/*/bin, initdb on PATH.
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
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from chunkcache.bench.live_server import LiveServer, free_port
from chunkcache.bench.redis_server import RedisServer

__all__ = ["PostgresServer", "RedisServer", "free_port", "pg_bindir", "redis_and_postgres", "serve_process"]


def _pgserver_utils():  # type: ignore[no-untyped-def]
    """pgserver.utils, or None without the wheel. Importing the package runs its server class's body, which asks
    platformdirs for a runtime lock path these tests never use; without $XDG_RUNTIME_DIR that warns, so not here."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import pgserver.utils
    except ImportError:
        return None
    return pgserver.utils


def pg_bindir() -> Path:
    """$CHUNKCACHE_PG_BIN, else pgserver's bundled PostgreSQL, else the newest Debian one, else PATH."""
    cands = [os.environ.get("CHUNKCACHE_PG_BIN")]
    if (utils := _pgserver_utils()) is not None:
        cands.append(str(Path(utils.__file__).parent / "pginstall" / "bin"))
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    cands.append(os.path.dirname(shutil.which("initdb") or "") or None)
    for c in cands:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise RuntimeError("PostgreSQL initdb/pg_ctl not found: pip install pgserver (a test extra), "
                       "or set CHUNKCACHE_PG_BIN")


def _pg_user_as_root(bindir: Path) -> pwd.struct_passwd:
    """The unprivileged user PostgreSQL runs as under root; its binaries made reachable for that user."""
    name = os.environ.get("CHUNKCACHE_PG_USER")
    if not name:
        try:
            return _reachable(pwd.getpwnam("postgres"), bindir)
        except KeyError:
            name = "pgserver"
    utils = _pgserver_utils()
    entry = utils.ensure_user_exists(name) if utils is not None else pwd.getpwnam(name)
    return _reachable(entry, bindir)


def _reachable(user: pwd.struct_passwd, bindir: Path) -> pwd.struct_passwd:
    """Let other users traverse to and run the binaries (pgserver's own recipe under root)."""
    utils = _pgserver_utils()
    if utils is None:
        return user
    import stat

    ensure_folder_permissions = utils.ensure_folder_permissions
    utils.ensure_prefix_permissions(bindir)
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


def serve_process(config: Path | None, log: Path, *flags: str, port: int | None = None) -> LiveServer:
    """`chunkcache serve [--config FILE] <flags>` (not started), one OpenMP thread: test servers run beside others."""
    return LiveServer([*(["--config", str(config)] if config else []), *flags], log, port=port,
                      env={"OMP_NUM_THREADS": "1"})
