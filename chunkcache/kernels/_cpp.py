"""The C++ CPU kernels (kernels/csrc/*.cpp): built once per machine with the system C++ compiler, loaded by ctypes.

Each source is plain C++17 with a C entry point and no torch headers, so a build takes seconds. It is
compiled with -O3 -march=native and cached as <cache>/<name>-<hash>.so, the hash covering the source,
the flags and this CPU's feature flags (a cache shared by different CPUs never serves a wrong build).
<cache> is $CHUNKCACHE_KERNEL_CACHE, else ~/.cache/chunkcache/kernels. With no compiler, or a failed
build, `load` returns None (the reason in `build_error`) and callers keep the torch reference.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
_errors: dict[str, str] = {}
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("CHUNKCACHE_KERNEL_CACHE", Path.home() / ".cache" / "chunkcache" / "kernels"))


def _cpu_id() -> str:
    """This CPU's identity for the cache key: the feature flags -march=native compiles for."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The shared object of csrc/<name>.cpp, built on first use; None (logged once) when it cannot be built here."""
    lib = _build_and_load(name)
    if lib is None:
        log.warning("C++ kernel %s unavailable, using the torch reference: %s", name, _errors[name])
    return lib


def _build_and_load(name: str) -> ctypes.CDLL | None:
    src = CSRC / f"{name}.cpp"
    cxx = _compiler()
    if cxx is None:
        _errors[name] = "no C++ compiler (c++, g++ or clang++) on PATH"
        return None
    digest = hashlib.sha256(src.read_bytes() + " ".join((cxx, *FLAGS, _cpu_id())).encode()).hexdigest()[:16]
    so = cache_dir() / f"{name}-{digest}.so"
    if not so.exists():
        try:
            _compile(cxx, src, so)
        except (OSError, subprocess.SubprocessError) as e:
            _errors[name] = f"{cxx} could not build {src.name} into {so.parent}: {e}"
            return None
    try:
        return ctypes.CDLL(str(so))
    except OSError as e:
        _errors[name] = f"cannot load {so}: {e}"
        return None


def _compile(cxx: str, src: Path, so: Path) -> None:
    so.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *FLAGS, str(src), "-o", tmp], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise subprocess.SubprocessError(f"exit {res.returncode}: {res.stderr.strip()[-2000:]}")
        os.replace(tmp, so)  # atomic: concurrent builders each write their own temp file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_error(name: str) -> str | None:
    """Why `load(name)` returned None (None when it loaded or was not tried)."""
    return _errors.get(name)
