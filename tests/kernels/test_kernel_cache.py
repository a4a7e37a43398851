"""The C++ kernel build cache is safe to share a machine with: private, locked, self-healing.

Each case runs in a fresh interpreter (the loader caches per process) against its own cache directory.
"""

import os
import platform
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkcache.kernels import _cpp

USE = """
import sys, torch
from chunkcache.kernels._cpp import build_error, load
from chunkcache.kernels.sparse_attention import plan_sparse_attention, sparse_query_attention_cpu
from chunkcache.kernels.sparse_attention import sparse_query_attention_ref
if load("sparse_attention_cpu") is None:
    print(build_error("sparse_attention_cpu"))
    sys.exit(3)
q, k, v = torch.randn(9, 70, 64), torch.randn(3, 90, 64), torch.randn(3, 90, 64)
plan = plan_sparse_attention(torch.arange(20, 90), 90)
for threads in (1, 2, 3):
    torch.set_num_threads(threads)
    torch.testing.assert_close(sparse_query_attention_cpu(q, k, v, plan, 0.125),
                               sparse_query_attention_ref(q, k, v, plan, 0.125), atol=2e-5, rtol=2e-5)
"""
REPORT = """
from chunkcache.kernels._cpp import openmp_runtime
print("openmp", load("sparse_attention_cpu").sparse_attention_openmp(), openmp_runtime())
"""


def _run(env_update: dict, code: str = USE, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_update}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, **kw)


def _torch_openmp() -> str:
    res = subprocess.run([sys.executable, "-c", "import torch; from chunkcache.kernels import _cpp; "
                          "print(_cpp.openmp_runtime())"], capture_output=True, text=True, check=True)
    return res.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux", reason="the process's OpenMP runtime is read from /proc")
def test_the_kernel_runs_on_torchs_openmp_pool(tmp_path):
    """Linked to the OpenMP runtime torch loaded, not a second one: its threads are torch's pool's."""
    runtime = _torch_openmp()
    if runtime == "None":
        pytest.skip("this torch build loads no (single) OpenMP runtime")
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(tmp_path)}, USE + REPORT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[-3:] == ["openmp", "1", runtime]  # still one runtime mapped: torch's


SECOND_RUNTIME = """
from pathlib import Path
import faiss  # the faiss-cpu wheel bundles its own renamed libgomp, mapped here before torch's
from chunkcache.kernels._cpp import OPENMP_RUNTIMES
runtimes = lambda: {Path(line.split()[-1]) for line in Path("/proc/self/maps").read_text().splitlines()
                    if Path(line.split()[-1]).name.startswith(OPENMP_RUNTIMES)}
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="the process's OpenMP runtime is read from /proc")
def test_a_second_openmp_runtime_does_not_cost_torchs_pool(tmp_path):
    """faiss (the server, the LangChain retriever) maps a second runtime first: the kernel still links torch's."""
    runtime = _torch_openmp()
    if runtime == "None":
        pytest.skip("this torch build loads no (single) OpenMP runtime")
    code = SECOND_RUNTIME + USE + "before = runtimes()" + REPORT + "print(len(before), runtimes() == before)"
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(tmp_path)}, code)
    assert res.returncode == 0, res.stdout + res.stderr
    *_, built, linked, runtime_to, n_runtimes, unchanged = res.stdout.split()
    if n_runtimes == "1":
        pytest.skip("this faiss-cpu wheel brings no OpenMP runtime of its own")
    assert (built, linked, runtime_to, unchanged) == ("openmp", "1", runtime, "True")


def test_a_compiler_without_openmp_builds_with_threads(tmp_path):
    """A compiler that rejects -fopenmp (clang without libomp) gets the std::thread build, not a failure."""
    cxx = tmp_path / "cxx-no-openmp"
    cxx.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {_cpp.compiler()} "$@"\n')
    cxx.chmod(cxx.stat().st_mode | stat.S_IXUSR)
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(tmp_path / "cache"), "CXX": str(cxx)}, USE + REPORT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[-3:-1] == ["openmp", "0"] and len(_sos(tmp_path / "cache")) == 1


def _sos(d: Path) -> list[Path]:
    return sorted(d.glob("sparse_attention_cpu-*.so"))


def test_fresh_cache_is_private(tmp_path):
    cache = tmp_path / "a" / "kernels"
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert cache.stat().st_mode & 0o777 == 0o700
    assert len(_sos(cache)) == 1


def test_a_directory_others_can_write_is_refused(tmp_path):
    cache = tmp_path / "shared"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)})
    assert res.returncode == 3 and "writable by other users" in res.stdout, res.stdout + res.stderr
    assert _sos(cache) == []


def test_another_users_directory_is_refused(tmp_path):
    if os.getuid() == 0:  # root: make a directory that really belongs to someone else
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
    else:  # a directory root owns
        theirs = Path("/usr")
    with pytest.raises(_cpp.UnsafeCacheDir, match="owned by uid"):
        _cpp.private_dir(theirs)
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(theirs)})
    assert res.returncode == 3 and "owned by uid" in res.stdout, res.stdout + res.stderr


def test_a_corrupt_so_is_rebuilt(tmp_path):
    cache = tmp_path / "kernels"
    assert _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)}).returncode == 0
    (so,) = _sos(cache)
    so.write_bytes(b"\x7fELF truncated by a full disk")
    res = _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rebuilding" in res.stderr
    assert _sos(cache) == [so] and so.stat().st_size > 1000


def test_concurrent_builds_do_not_corrupt_each_other(tmp_path):
    cache = tmp_path / "kernels"
    env = {**os.environ, "CHUNKCACHE_KERNEL_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", USE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert len(_sos(cache)) == 1
    assert list(cache.glob(".build-*")) == []


def test_stray_temporary_files_are_swept(tmp_path):
    cache = tmp_path / "kernels"
    cache.mkdir(mode=0o700)
    stale, fresh = cache / ".build-dead.so", cache / ".build-running.so"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * _cpp.STALE_TMP_S
    os.utime(stale, (old, old))
    assert _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)}).returncode == 0
    assert not stale.exists() and fresh.exists()  # a build still running elsewhere keeps its file


def test_no_home_falls_back_to_a_private_temp_dir(tmp_path):
    """No HOME and no passwd entry for the uid (a container; Path.home() then raises, simulated here since the
    interpreter must stay readable): the cache goes to <tmp>/chunkcache-kernels-<uid>, private."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "CHUNKCACHE_KERNEL_CACHE")}
    env["TMPDIR"] = str(tmp_path)
    code = "import pathlib; pathlib.Path.home = classmethod(lambda c: (_ for _ in ()).throw(RuntimeError()))\n"
    res = subprocess.run([sys.executable, "-c", code + USE], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    cache = tmp_path / f"chunkcache-kernels-{os.getuid()}"
    assert len(_sos(cache)) == 1 and cache.stat().st_mode & 0o777 == 0o700


def test_cache_key_covers_compiler_version_and_isa(monkeypatch):
    base = _cpp.so_path("sparse_attention_cpu")
    assert base is not None and "native" in base.name
    assert _cpp.so_path("sparse_attention_cpu", "x86-64-v2") != base
    monkeypatch.setattr(_cpp, "compiler_version", lambda cxx: "g++ (Debian 99.0.0) 99.0.0")
    assert _cpp.so_path("sparse_attention_cpu") != base


def _aged(path: Path, days: float, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    then = time.time() - days * 86400
    os.utime(path, (then, then))
    return path


def test_unused_builds_and_decisions_are_pruned_at_the_next_build(tmp_path):
    """A new build removes the builds and dispatch decisions unused for 30 days (and a stale build's lock),
    keeps recent ones, and touches nothing it did not write."""
    cache = tmp_path / "kernels"
    cache.mkdir(mode=0o700)
    stale_so = _aged(cache / "sparse_attention_cpu-native-0123456789abcdef.so", 40)
    stale_lock = _aged(cache / "sparse_attention_cpu-native-0123456789abcdef.lock", 40, b"")
    stale_json = _aged(cache / "dispatch-attention-0123456789abcdef.json", 31)
    orphan_lock = _aged(cache / "sparse_attention_cpu-x86-64-v2-fedcba9876543210.lock", 40, b"")
    recent_so = _aged(cache / "sparse_attention_cpu-x86-64-v3-fedcba9876543210.so", 29)
    recent_json = _aged(cache / "dispatch-attention-fedcba9876543210.json", 1)
    theirs = _aged(cache / "notes.txt", 400)
    assert _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)}).returncode == 0
    assert not any(p.exists() for p in (stale_so, stale_lock, stale_json, orphan_lock))
    assert all(p.exists() for p in (recent_so, recent_json, theirs))
    assert len(_sos(cache)) == 2  # the recent one and the new build


def test_a_loaded_build_is_stamped_and_kept(tmp_path):
    cache = tmp_path / "kernels"
    assert _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)}).returncode == 0
    (so,) = _sos(cache)
    _aged(so, 60, so.read_bytes())
    assert _run({"CHUNKCACHE_KERNEL_CACHE": str(cache)}).returncode == 0  # loads the cached build
    assert time.time() - so.stat().st_mtime < 600
    assert _cpp.prune(cache, keep=cache / "other.so") == [] and so.exists()


def test_a_build_whose_lock_another_process_holds_is_not_pruned(tmp_path):
    so = _aged(tmp_path / "sparse_attention_cpu-native-0123456789abcdef.so", 40)
    lock = so.with_suffix(".lock")
    hold = (f"import time; from filelock import FileLock; held = FileLock({str(lock)!r}); held.acquire(); "
            "print('held', flush=True); time.sleep(60)")  # a build under way elsewhere
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _cpp.prune(tmp_path, keep=tmp_path / "new.so") == [] and so.exists() and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert _cpp.prune(tmp_path, keep=tmp_path / "new.so") == [so] and not so.exists()
