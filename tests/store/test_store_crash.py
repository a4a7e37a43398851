"""SIGKILL a disk writer repeatedly; every entry read back afterwards is whole or a recorded miss."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import store_worker
from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_writer_repeatedly(tmp_path):
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(Path(store_worker.__file__).parent)]))
    attempted: set[int] = set()
    start = 0
    for _round in range(5):
        proc = subprocess.Popen([sys.executable, store_worker.__file__, "crash-writer", str(tmp_path), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.2, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        done = [int(x) for x in out.split()]
        last = done[-1] if done else start - 1
        attempted.update(range(start, last + 2))  # the one in flight when killed too
        attempted.update(s // 2 for s in range(start, last + 2) if s % 3 == 0)
        start = last + 2
    assert len(attempted) > 10
    tmp_left = list(tmp_path.rglob("*.tmp"))
    with ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path))) as store:
        assert not list(tmp_path.rglob("*.tmp"))  # stray temp files of dead writers swept at open
        whole = 0
        for seed in sorted(attempted):
            expected = make_kv(seed, **store_worker.CRASH_SHAPE)
            got = store.get(expected.key, FP)
            if got is not None:
                assert same(got, expected), f"seed {seed}: wrong KV served after a crash"
                whole += 1
        st = store.stats()
        # the only tolerated fault: a file renamed into place whose catalog row the kill prevented
        assert set(st["fallbacks"]) <= {"catalog_row_missing"}, st["fallbacks"]
        assert whole >= len(attempted) - 5 - st["fallbacks"].get("catalog_row_missing", 0)
    print(f"{len(attempted)} chunks attempted, {whole} whole, {len(tmp_left)} temp files left by kills")


def test_stray_temp_files_of_dead_writers_are_swept(tmp_path):
    kv = make_kv(1)
    with ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path))) as store:
        store.put(kv)
        path = store.tier("disk").path(kv.key)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = path.parent / f".{kv.key}.{int(dead.stdout)}.abcd1234.tmp"
    live = path.parent / f".{kv.key}.{os.getpid()}.abcd1234.tmp"
    stray.write_bytes(path.read_bytes()[:50])  # a torn write
    live.write_bytes(b"in progress")
    with ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(tmp_path))) as store:
        assert not stray.exists() and live.exists()  # a live writer's temp file is left alone
        assert same(store.get(kv.key, FP), kv)
