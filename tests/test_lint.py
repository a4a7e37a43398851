"""The repository lints clean under its own ruff settings (pyproject.toml [tool.ruff]): pyflakes' undefined names
and unused imports, pycodestyle, and bugbear (zip without strict=, raise without from), over the package, tests,
benchmarks and examples."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "--config", str(ROOT / "pyproject.toml"), *paths], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_is_clean():
    res = _ruff(".")
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_settings_catch_what_they_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f(a, b):\n    return [x + y for x, y in zip(a, b)] + missing\n")
    res = _ruff(str(probe))
    assert res.returncode == 1
    assert "F821" in res.stdout and "B905" in res.stdout, res.stdout
