"""The test harness itself (conftest.py): the run keeps its own kernel cache, and a run without the test extra's
plugins is refused with the extra's name instead of "unrecognized arguments"."""

import os
import subprocess
import sys
from pathlib import Path

from chunkcache.kernels import _cpp

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest collecting this file in a subprocess, at the repository root (pyproject's addopts apply)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", *args, "tests/test_harness.py"],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_the_run_builds_kernels_outside_the_users_cache():
    cache = _cpp.cache_dir()
    assert cache == Path(os.environ["CHUNKCACHE_KERNEL_CACHE"])
    assert cache != Path.home() / ".cache" / "chunkcache" / "kernels"
    assert cache.is_dir() and cache.stat().st_mode & 0o777 == 0o700


def test_a_child_pytest_puts_its_kernel_cache_under_pytest_cache_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CHUNKCACHE_KERNEL_CACHE"}
    code = ("import os, pytest\n"
            "def test_cache():\n"
            "    print('KERNEL_CACHE=' + os.environ['CHUNKCACHE_KERNEL_CACHE'])\n")
    (tmp_path / "test_child.py").write_text(code)
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "tiny_models.py").write_text((ROOT / "tests" / "tiny_models.py").read_text())
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:xdist",
                          "-o", f"cache_dir={tmp_path / 'pc'}", "test_child.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("KERNEL_CACHE="))
    assert Path(line.split("=", 1)[1]) == tmp_path / "pc" / "d" / "chunkcache" / "kernels"


def test_without_the_plugins_pytest_names_the_test_extra():
    res = _pytest(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "xdist, benchmark not installed" in res.stderr and '-e ".[test]"' in res.stderr, res.stderr


def test_blocking_the_plugins_runs_in_one_process():
    res = _pytest("-p", "no:xdist", "-p", "no:benchmark")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 tests collected" in res.stdout, res.stdout
