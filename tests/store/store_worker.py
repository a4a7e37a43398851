"""Subprocess worker for the multi-process store tests: `python store_worker.py COMMAND ARGS...`.

write-remote URL SEED...    put chunks through a CPU + Redis (write-through) store
read-remote URL SEED...     get them from a fresh store; print JSON {seed: "ok" | "miss" | "WRONG"}
crash-writer DIR START      put chunks to a disk store forever (the test SIGKILLs it), printing each seed
put-same DIR SEED N         put one chunk N times to a disk store (concurrent writers of one key)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from store_kvgen import FP, make_kv, same

from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig

CRASH_SHAPE = dict(n_tokens=128, n_layers=8, n_kv=2, head_dim=64)  # 512 KiB per chunk


def remote_store(url: str) -> ChunkStore:
    return ChunkStore(StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 24),
                                         TierConfig("remote", url=url, write_through=True)), catalog=False))


def disk_store(root: str) -> ChunkStore:
    return ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=root))


def run(env_root: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """Run this worker in a new process (used by the tests)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(env_root), str(Path(__file__).parent)]))
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, **kw)


def main(argv: list[str]) -> None:
    cmd, *rest = argv
    if cmd == "write-remote":
        with remote_store(rest[0]) as store:
            ok = [store.put(make_kv(int(s))) for s in rest[1:]]
            print(json.dumps({"ok": all(ok), "failures": store.stats()["put_failures"]}))
    elif cmd == "read-remote":
        with remote_store(rest[0]) as store:
            out = {}
            for s in rest[1:]:
                got = store.get(make_kv(int(s)).key, FP)
                out[s] = "miss" if got is None else ("ok" if same(got, make_kv(int(s))) else "WRONG")
            print(json.dumps(out))
    elif cmd == "crash-writer":
        store = disk_store(rest[0])
        seed = int(rest[1])
        print("ready", flush=True)
        while True:
            store.put(make_kv(seed, **CRASH_SHAPE))
            print(seed, flush=True)
            if seed % 3 == 0:  # overwrite an older key too
                store.put(make_kv(seed // 2, **CRASH_SHAPE))
            seed += 1
    elif cmd == "put-same":
        with disk_store(rest[0]) as store:
            for _ in range(int(rest[2])):
                assert store.put(make_kv(int(rest[1]), **CRASH_SHAPE))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
