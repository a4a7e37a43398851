"""The repository lints clean under its own ruff settings (pyproject.toml [tool.ruff]): pyflakes' undefined names
and unused imports, and pycodestyle, over the package, tests, benchmarks and examples."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
