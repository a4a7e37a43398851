"""The C++ CPU kernels (kernels/csrc/*.cpp): built once per machine with the system C++ compiler, loaded by ctypes.

Each source is plain C++17 with a C entry point and no torch headers, so a build takes about a second.
It is compiled for an ISA level (`-march=native` by default; `x86-64-v2|v3|v4`, `armv8-a` for the
portable builds) and cached as <cache>/<name>-<march>-<hash>.so, the hash covering the source, the
flags, the compiler and its version, and this CPU's feature flags, so a cache shared by different CPUs or
compilers never serves a wrong build.

The cache is private to its user: <cache> is $CHUNKCACHE_KERNEL_CACHE, else ~/.cache/chunkcache/kernels,
else (no HOME, no passwd entry: a container) <tmp>/chunkcache-kernels-<uid>. It is created with mode 0700
and refused, before any `.so` in it is loaded, when another user owns it or others can write to it.
Builds hold a file lock, so concurrent processes build once; a cached `.so` that fails to load is rebuilt;
temporary files left by a killed build are swept. Loading a build stamps its mtime (ctypes leaves no access
time to go by); each new build or dispatch decision then removes the builds and decisions unused for
PRUNE_AFTER_S (a new source, compiler, torch or CPU leaves the old ones unreachable). With no compiler,
or a failed build, `load` returns None (the reason in `build_error`) and callers keep the torch reference.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout

CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-std=c++17", "-ffp-contract=fast", "-shared", "-fPIC", "-pthread")
STALE_TMP_S = 600  # a temporary .so older than this belongs to a build that died
PRUNE_AFTER_S = 30 * 86400  # a build or dispatch decision unused this long is removed at the next new one
_errors: dict[str, str] = {}
log = logging.getLogger(__name__)


class UnsafeCacheDir(RuntimeError):
    """The kernel cache directory belongs to another user or others can write to it."""


def cache_dir() -> Path:
    """The kernel cache directory (not created here)."""
    env = os.environ.get("CHUNKCACHE_KERNEL_CACHE")
    if env:
        return Path(env)
    try:
        return Path.home() / ".cache" / "chunkcache" / "kernels"
    except (KeyError, RuntimeError):  # no HOME and no passwd entry for this uid
        return Path(tempfile.gettempdir()) / f"chunkcache-kernels-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) if needed; raise UnsafeCacheDir unless this user owns it and only they can write."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise UnsafeCacheDir(f"kernel cache {path} is owned by uid {st.st_uid}, not this user ({os.getuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheDir(f"kernel cache {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
    return path


def cpuinfo(*fields: str) -> str:
    """The value of the first /proc/cpuinfo line starting with one of `fields` (else the platform's processor)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(fields):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """This CPU's feature flags (the line -march=native compiles for; x86 "flags", AArch64 "Features")."""
    return cpuinfo("flags", "Features")


ISA_LEVELS = {  # -march level: the CPU flags it needs to run (x86-64 psABI levels); AArch64's baseline is NEON
    "x86-64-v2": {"sse4_2", "popcnt", "ssse3"},
    "x86-64-v3": {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
    "armv8-a": {"asimd"},
}


def runnable_isas() -> list[str]:
    """The portable -march levels this CPU can execute (besides native)."""
    flags = set(cpu_flags().split())
    x86 = platform.machine() in ("x86_64", "AMD64")
    return [m for m, need in ISA_LEVELS.items() if m.startswith("x86") == x86 and need <= flags]


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@functools.cache
def compiler_version(cxx: str) -> str:
    """The first line of `cxx --version` ('' when it does not answer)."""
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return res.stdout.splitlines()[0] if res.returncode == 0 and res.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


OPENMP_RUNTIMES = ("libgomp", "libiomp5", "libomp")  # GNU, Intel, LLVM: each serves GCC's GOMP_* entry points


def openmp_runtime() -> Path | None:
    """The OpenMP runtime torch runs its pool on, on Linux; None when the process has loaded none, or several
    and torch's cannot be told. A kernel linked to it runs its threads from torch's pool instead of starting its
    own, which on a machine with as many threads as cores would share them with torch's spinning workers.
    Several are common: the faiss-cpu and scikit-learn wheels bring their own renamed libgomp."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    fields = (line.split(maxsplit=5) for line in maps)  # address perms offset dev inode [path]
    mapped = [(f[0], Path(f[5])) for f in fields if len(f) == 6]
    found = {path for _, path in mapped if path.name.startswith(OPENMP_RUNTIMES)}
    if len(found) <= 1:
        return found.pop() if found else None
    owner = _owner(mapped, _resolved_in(mapped, "libtorch_cpu", "omp_get_max_threads"))
    return owner if owner in found else None


def _resolved_in(mapped: list[tuple[str, Path]], library: str, symbol: str) -> int | None:
    """The address `symbol` resolves to from the mapped library named `library*` (its own dependencies first)."""
    lib = next((path for _, path in mapped if path.name.startswith(library)), None)
    try:
        fn = getattr(ctypes.CDLL(str(lib), mode=os.RTLD_NOLOAD), symbol) if lib else None
    except (OSError, AttributeError):
        return None
    return ctypes.cast(fn, ctypes.c_void_p).value if fn is not None else None


def _owner(mapped: list[tuple[str, Path]], addr: int | None) -> Path | None:
    """The mapped file that holds `addr` (maps' "lo-hi" spans, hexadecimal)."""
    if addr is None:
        return None
    for span, path in mapped:
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= addr < hi:
            return path
    return None


def so_path(name: str, march: str = "native") -> Path | None:
    """Where the build of csrc/<name>.cpp for `march` is cached (None without a compiler)."""
    return _so_path(name, march, openmp_runtime())


def _so_path(name: str, march: str, omp: Path | None) -> Path | None:
    """so_path for the OpenMP runtime `omp` the build links (None: the std::thread build)."""
    cxx = compiler()
    if cxx is None:
        return None
    src = (CSRC / f"{name}.cpp").read_bytes()
    key = " ".join((cxx, compiler_version(cxx), f"-march={march}", *FLAGS, str(omp), cpu_flags())).encode()
    return cache_dir() / f"{name}-{march}-{hashlib.sha256(src + key).hexdigest()[:16]}.so"


@functools.cache
def load(name: str, march: str = "native") -> ctypes.CDLL | None:
    """The shared object of csrc/<name>.cpp for `march`, built on first use; None (logged once) when it cannot
    be built or loaded here."""
    lib = _build_and_load(name, march)
    if lib is None:
        log.warning("C++ kernel %s (-march=%s) unavailable, using the torch reference: %s", name, march,
                    _errors[(name, march)])
    return lib


def _build_and_load(name: str, march: str) -> ctypes.CDLL | None:
    omp = openmp_runtime()  # read once: the cache key and the link name the same runtime
    so = _so_path(name, march, omp)
    if so is None:
        _errors[(name, march)] = "no C++ compiler (c++, g++ or clang++) on PATH"
        return None
    try:
        private_dir(so.parent)
        with FileLock(str(so.with_suffix(".lock")), timeout=600):
            _sweep(so.parent)
            if so.exists():
                try:
                    lib = ctypes.CDLL(str(so))
                    touch(so)
                    return lib
                except OSError as e:  # truncated or corrupt: rebuild it
                    log.warning("cached kernel %s does not load (%s); rebuilding", so, e)
                    so.unlink()
            _compile(compiler(), CSRC / f"{name}.cpp", so, march, omp)
            lib = ctypes.CDLL(str(so))
        prune(so.parent, keep=so)
        return lib
    except (OSError, subprocess.SubprocessError, UnsafeCacheDir, Timeout) as e:
        _errors[(name, march)] = f"could not build or load {name} (-march={march}) in {so.parent}: {e}"
        return None


def _compile(cxx: str, src: Path, so: Path, march: str, omp: Path | None) -> None:
    """Build `so`: against the OpenMP runtime `omp` (torch's, `openmp_runtime()`) where there is one and the
    compiler takes -fopenmp (compiled with -fopenmp, linked to that runtime's file, not the compiler's -lgomp),
    else with std::thread."""
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=so.parent)
    os.close(fd)
    obj = tmp[:-3] + ".o"
    try:
        if omp is not None and _run([cxx, f"-march={march}", *FLAGS, "-fopenmp", "-c", str(src), "-o", obj],
                                    required=False):
            _run([cxx, *FLAGS, obj, str(omp), f"-Wl,-rpath,{omp.parent}", "-o", tmp])
        else:
            if omp is not None:
                log.info("%s does not compile %s with -fopenmp; building it with std::thread", cxx, src.name)
            _run([cxx, f"-march={march}", *FLAGS, str(src), "-o", tmp])
        os.chmod(tmp, 0o700)
        os.replace(tmp, so)  # atomic: a reader sees the old file or the whole new one
    finally:
        for path in (tmp, obj):
            if os.path.exists(path):
                os.unlink(path)


def _run(cmd: list[str], required: bool = True) -> bool:
    """Run a compiler command; False when it fails and is not required (else SubprocessError with its stderr)."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and required:
        raise subprocess.SubprocessError(f"exit {res.returncode}: {res.stderr.strip()[-2000:]}")
    return res.returncode == 0


def _sweep(directory: Path) -> None:
    """Remove temporary build files a killed build left behind (older than STALE_TMP_S)."""
    now = time.time()
    for tmp in directory.glob(".build-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass


def touch(path: Path) -> None:
    """Stamp `path` as used now, so that prune keeps it (best effort)."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune(directory: Path, keep: Path, max_age_s: float = PRUNE_AFTER_S) -> list[Path]:
    """Remove the builds (`*.so`, each under its own lock, skipped while another process holds it) and dispatch
    decisions (`dispatch-*.json`) in `directory` not used for max_age_s, but not `keep`, then the lock files
    of builds no longer there (none held). Nothing else in the directory is touched. Returns what was removed."""
    old = time.time() - max_age_s
    removed = []
    for path in sorted(directory.glob("*.so")) + sorted(directory.glob("dispatch-*.json")):
        try:
            if path == keep or path.stat().st_mtime > old:
                continue
            if path.suffix == ".so":
                with FileLock(str(path.with_suffix(".lock")), timeout=0):
                    if path.stat().st_mtime > old:  # loaded since the first look
                        continue
                    path.unlink()
            else:
                path.unlink()
            removed.append(path)
        except (OSError, Timeout):  # gone already, or in use by a build or load elsewhere
            continue
    for lock in sorted(directory.glob("*.lock")):  # a build's lock outlives it; one held is a build under way
        try:
            if lock.with_suffix(".so").exists() or lock.stat().st_mtime > time.time() - STALE_TMP_S:
                continue
            with FileLock(str(lock), timeout=0):
                lock.unlink()
            removed.append(lock)
        except (OSError, Timeout):
            continue
    if removed:
        log.info("kernel cache %s: removed %d entries unused for %d days", directory, len(removed),
                 max_age_s // 86400)
    return removed


def build_error(name: str, march: str = "native") -> str | None:
    """Why `load(name, march)` returned None (None when it loaded or was not tried)."""
    return _errors.get((name, march))
