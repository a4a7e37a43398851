"""`chunkcache bench memory`: peak memory of one request, full prefill vs blended.

Each (example, mode) runs in a fresh subprocess: load the model, precompute the chunks into an
in-memory store, then sample the process RSS (/proc/self/statm) every millisecond from a thread
while one prefill runs. The figure is the peak RSS during the request minus the RSS just before
it: what the request itself adds (merged cache, activations, chunk KV in flight), not the model or
the store. The ratio blended / full is paired per example.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.config.arg_types import positive

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _measure(data: str, index: int, mode: str, ratio: float) -> dict:
    """Runs in the child: one prefill of example `index` in `mode`, returns its RSS peak above baseline."""
    import gc

    from chunkcache.bench.musique import load_examples, passage_text
    from chunkcache.blend.config import BlendConfig
    from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig

    engine = ChunkCacheEngine.from_config(EngineConfig(store="memory"))
    ex = load_examples(data, index + 1)[index]
    chunks = [passage_text(c) for c in ex["ctxs"]]
    engine.precompute(chunks)
    req = engine.prompts.request(chunks, ex["question"])
    gc.collect()
    base = peak = _rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    res = engine.prefill(req, BlendConfig(mode=mode, recompute_ratio=ratio))
    done.set()
    t.join()
    peak = max(peak, _rss())
    return {"mode": mode, "example": index, "prompt_tokens": req.num_tokens, "baseline_mb": base / 2**20,
            "peak_delta_mb": (peak - base) / 2**20, "cache_mb": (res.cache.keys.nbytes * 2) / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chunkcache bench memory", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--limit", type=positive, default=2)
    p.add_argument("--modes", default="full,naive,cacheblend,adaptive")
    p.add_argument("--recompute-ratio", type=float, default=0.15)
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=2, metavar=("INDEX", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.data, int(args.child[0]), args.child[1], args.recompute_ratio)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    rows = []
    for i in range(args.limit):
        for mode in modes:
            cmd = [sys.executable, "-m", "chunkcache.bench.memory", "--data", args.data, "--recompute-ratio",
                   str(args.recompute_ratio), "--child", str(i), mode]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"example {i} {mode:<10} peak +{rows[-1]['peak_delta_mb']:.0f} MB "
                  f"(merged cache {rows[-1]['cache_mb']:.0f} MB)", flush=True)
    full = {r["example"]: r["peak_delta_mb"] for r in rows if r["mode"] == "full"}
    summary = {mode: {"peak_delta_mb_median": statistics.median(r["peak_delta_mb"] for r in rows if r["mode"] == mode),
                      "peak_vs_full_median": statistics.median(r["peak_delta_mb"] / full[r["example"]]
                                                               for r in rows if r["mode"] == mode)}
               for mode in modes if full}
    result = {"modes": summary, "rows": rows, "method": __doc__.split("\n\n")[1].replace("\n", " ")}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
