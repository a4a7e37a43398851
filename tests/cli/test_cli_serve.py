"""`chunkcache ingest`, `stats` and `ask` as real subprocesses on a temp cache dir (the real model: slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _cli(cache, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "chunkcache.cli", "--threads", "1", *args, "--cache-dir", str(cache)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_api_cli_ingest_stats_ask(tmp_path) -> None:  # type: ignore[no-untyped-def]
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    (docs / "sub").mkdir(parents=True)
    (docs / "rivers.md").write_text("# Rivers\n\nThe Nile flows north through Egypt into the Mediterranean Sea.\n\n"
                                    "The Rhine rises in the Swiss Alps.")
    (docs / "sub" / "birds.txt").write_text("Penguins cannot fly. Emperor penguins live in Antarctica.")
    (docs / "sub" / "ignored.bin").write_bytes(b"\x00\x01")
    r = _cli(cache, "ingest", str(docs), "--chunk-tokens", "24", "--overlap-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "ingested 2 documents" in r.stdout and "precompute" in r.stderr  # tqdm bars go to stderr
    n_chunks = int(r.stdout.split(":")[1].split()[0])
    assert n_chunks >= 3

    r = _cli(cache, "stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["index"]["chunks"] == stats["index"]["vectors"] == n_chunks and stats["index"]["documents"] == 2
    assert stats["tiers"]["disk"]["entries"] >= n_chunks + 1  # chunks + the system prefix
    assert stats["catalog"][0]["chunks"] == stats["tiers"]["disk"]["entries"]

    r = _cli(cache, "ask", "Where do emperor penguins live?", "-k", "2", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr
    first_hit = r.stdout.splitlines()[0]
    assert "birds.txt" in first_hit and "chunk hits 3, misses 0" in r.stdout  # prefix + 2 chunks from disk
    r = _cli(cache, "ask", "Where do emperor penguins live?", "-k", "2", "--max-tokens", "4",
             "--decode-correction", "16")
    assert r.returncode == 0 and "prompt tokens recomputed during decode" in r.stdout, r.stderr
    r = _cli(cache, "ask", "Where do emperor penguins live?", "--calibrated")  # never calibrated here
    assert r.returncode == 2 and "calibrated" in r.stderr and "chunkcache calibrate" in r.stderr

    r = _cli(cache, "ingest", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr
