"""`chunkcache bench tiers`: cacheblend TTFT with chunk KV on the disk tier vs in the CPU tier.

Per example, the same request runs with the chunks (a) in the CPU tier, (b) on the disk tier only,
loaded layer by layer while the blender computes (pipelined), and (c) on the disk tier read whole
before compute (no pipelining). Before every disk run each entry file's pages are dropped from the
OS page cache (posix_fadvise DONTNEED), so reads come from the device. Figures are medians of
per-example paired ratios (disk TTFT / CPU TTFT), each TTFT the median of `reps` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from chunkcache.bench.musique import DEFAULT_DATA, load_examples, passage_text
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.config import StoreSettings
from chunkcache.config.arg_types import positive
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig, TierConfig


class WholeEntryStore:
    """A ChunkStore seen without get_layers: every chunk is read whole before compute starts."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store

    def get(self, key: str, fingerprint: str, device: str = "cpu") -> ChunkKV | None:
        return self.store.get(key, fingerprint, device)

    def put(self, kv: ChunkKV) -> None:
        self.store.put(kv)


def _ttft(engine: ChunkCacheEngine, chunks: list[str], question: str, cfg: BlendConfig, reps: int,
          before=None) -> float:  # type: ignore[no-untyped-def]
    req = engine.prompts.request(chunks, question)
    times = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        res = engine.prefill(req, cfg)
        times.append(time.perf_counter() - t0)
        if res.stats.chunk_misses:
            raise RuntimeError(f"chunk misses during a timed run: {res.stats.as_dict()}")
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    examples = load_examples(args.data, args.limit)
    cfg = BlendConfig(mode="cacheblend", recompute_ratio=args.recompute_ratio)
    base = ChunkCacheEngine.from_config(EngineConfig(model_path=args.model, store="memory"))
    root = Path(tempfile.mkdtemp(prefix="chunkcache-tiers-", dir=args.dir))
    warm = ChunkStore(StoreSettings().store_config(root))
    disk = ChunkStore(StoreConfig(tiers=(TierConfig("disk", path=str(root / "chunks")),), cache_dir=str(root),
                                  promote_on_hit=False))
    cpu_engine = ChunkCacheEngine(base.runner, warm)
    disk_engine = ChunkCacheEngine(base.runner, disk)
    whole_engine = ChunkCacheEngine(base.runner, WholeEntryStore(disk))
    rows = []
    for i, ex in enumerate(examples):
        chunks = [passage_text(c) for c in ex["ctxs"]]
        keys = cpu_engine.precompute(chunks)
        keys.append(cpu_engine.source.key(cpu_engine.prompts.prefix_ids, ()))
        disk_tier = disk.tier("disk")

        def drop() -> None:
            for key in keys:
                disk_tier.drop_page_cache(key)

        cpu = _ttft(cpu_engine, chunks, ex["question"], cfg, args.reps)
        piped = _ttft(disk_engine, chunks, ex["question"], cfg, args.reps, before=drop)
        whole = _ttft(whole_engine, chunks, ex["question"], cfg, args.reps, before=drop)
        rows.append({"example": i, "prompt_tokens": cpu_engine.prompts.request(chunks, ex["question"]).num_tokens,
                     "cpu_ttft_s": cpu, "disk_pipelined_ttft_s": piped, "disk_whole_ttft_s": whole,
                     "disk_vs_cpu": piped / cpu, "disk_whole_vs_cpu": whole / cpu})
        print(f"example {i}: cpu {cpu:.2f}s  disk pipelined {piped:.2f}s ({piped / cpu:.3f}x)  "
              f"disk whole {whole:.2f}s ({whole / cpu:.3f}x)", flush=True)
    warm.close()
    disk.close()
    return {"disk_vs_cpu_ttft_median": statistics.median(r["disk_vs_cpu"] for r in rows),
            "disk_whole_vs_cpu_ttft_median": statistics.median(r["disk_whole_vs_cpu"] for r in rows),
            "page_cache": "posix_fadvise(POSIX_FADV_DONTNEED) on every entry file before each disk-tier run",
            "config": {"data": str(args.data), "limit": args.limit, "reps": args.reps,
                       "recompute_ratio": args.recompute_ratio, "dir": str(root)},
            "examples": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chunkcache bench tiers", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=positive, default=4)
    p.add_argument("--reps", type=positive, default=3)
    p.add_argument("--recompute-ratio", type=float, default=0.15)
    p.add_argument("--model", default=None)
    p.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: system temp)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
