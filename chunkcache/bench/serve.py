"""`chunkcache bench serve`: throughput, TTFT and inter-token latency of a live server under load (issue 20).

Per setting (mode, batching, load) a fresh `chunkcache serve` starts on loopback with an empty store in a temp
directory: a CPU tier of --cpu-bytes (smaller than the pool's KV) over the disk tier. Nothing is precomputed:
chunks enter the store as requests bring them (one tiny unrelated request first absorbs one-time start costs;
--warmup N adds N requests of another seeded sequence). The load is --clients closed-loop clients (each sends
its next request when its last one is answered) and/or Poisson arrivals at --rates requests/s, over the same
seeded MuSiQue request sequence for every setting (serve_load.build_requests), streamed (SSE) so the client
times the first token and every later one. Settings: each of --modes with batching, plus blend one-at-a-time
(today's server); --no-batching runs that one only. Batching is the server's `--max-batch <clients>` (Poisson:
--max-batch, default the largest client count) and one-at-a-time `--max-batch 1`; a server without the flag
runs one at a time either way, and the JSON says so (`server_batching`). A row's windows pair it per request
index with `full` with batching at the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx

from chunkcache.bench.live_server import LiveServer, serve_flags, stream_request
from chunkcache.bench.musique import DEFAULT_DATA, load_examples
from chunkcache.bench.serve_load import LoadRequest, Sample, build_requests, passage_pool, summarize, targets, windows
from chunkcache.config.arg_types import byte_size, non_negative, positive, positives
from chunkcache.kernels._cpp import cpuinfo

SERVE_MODES = ("blend", "full", "prefix")
WARMUP_CHUNKS = ["The Loire is the longest river in France.", "Lyon lies where the Rhone meets the Saone."]


@dataclass(frozen=True)
class Setting:
    """One server and load: mode, batching, `clients` closed-loop clients or Poisson arrivals at `rate` req/s."""

    mode: str
    batching: bool
    clients: int | None = None
    rate: float | None = None

    def label(self) -> str:
        load = f"{self.clients} clients" if self.clients is not None else f"{self.rate:g} req/s"
        return f"{self.mode} {'batching' if self.batching else 'one-at-a-time'}, {load}"


def _rates(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if min(values, default=0) <= 0:
        raise argparse.ArgumentTypeError(f"--rates: expected positive requests/s, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in SERVE_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"--modes: each must be one of {SERVE_MODES}, got {text!r}")
    return modes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkcache bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=positive, default=600, help="requests per setting (default 600)")
    p.add_argument("--clients", type=positives, default=[1, 4, 16], help="closed-loop client counts (default 1,4,16)")
    p.add_argument("--rates", type=_rates, default=[], help="also Poisson arrivals at these requests/s")
    p.add_argument("--modes", type=_modes, default=list(SERVE_MODES), help="with batching (default blend,full,prefix)")
    p.add_argument("--no-batching", action="store_true", help="only blend one-at-a-time")
    p.add_argument("--batching-only", action="store_true", help="skip the one-at-a-time blend row")
    p.add_argument("--max-batch", type=positive, default=None,
                   help="server --max-batch of Poisson runs (default: max clients)")
    p.add_argument("--passages", type=positive, default=3, help="passages per request (default 3)")
    p.add_argument("--pool", type=positive, default=None, help="the first N distinct passages of --data (default all)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent over the pool (default 1.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=positive, default=32)
    p.add_argument("--window", type=positive, default=50, help="requests per speedup window (default 50)")
    p.add_argument("--warmup", type=non_negative, default=0,
                   help="requests of another seeded sequence before measuring")
    p.add_argument("--cpu-bytes", type=byte_size, default="512MiB", help="server CPU tier (default 512MiB)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=positive, default=None, help="server torch threads")
    p.add_argument("--kernels", default=None, help="server attention kernels")
    p.add_argument("--server-args", default="", help="more `chunkcache serve` flags, one shell-quoted string")
    p.add_argument("--json", default=None)
    return p


def settings(args: argparse.Namespace) -> list[Setting]:
    loads = [(c, None) for c in args.clients] + [(None, r) for r in args.rates]
    one = [Setting("blend", False, c, r) for c, r in loads]
    batched = [Setting(m, True, c, r) for m in args.modes for c, r in loads]
    return one if args.no_batching else batched if args.batching_only else one + batched


def server_flags(args: argparse.Namespace, s: Setting, batching_flag: bool) -> list[str]:
    flags = ["--cpu-bytes", str(args.cpu_bytes), "--store", "disk", "--max-new-tokens", str(max(512, args.max_tokens)),
             "--max-queue", str(max(16, 2 * (s.clients or 0)))]
    for name in ("model", "threads", "kernels"):
        if getattr(args, name) is not None:
            flags += [f"--{name}", str(getattr(args, name))]
    if batching_flag:
        flags += ["--max-batch", str((s.clients or args.max_batch or max(args.clients)) if s.batching else 1)]
    return flags + shlex.split(args.server_args)


def _body(req: LoadRequest, mode: str, max_tokens: int) -> dict:
    return {"chunks": list(req.chunks), "query": req.query, "mode": mode, "max_tokens": max_tokens}


async def _load(url: str, bodies: list[dict], s: Setting, seed: int) -> tuple[list[Sample], list[str], float]:
    """Run the load; (answered samples, errors, wall seconds from the first send to the last answer)."""
    out: list[Sample] = []
    errors: list[str] = []
    conns = s.clients or len(bodies)
    async with httpx.AsyncClient(base_url=url, timeout=1800,
                                 limits=httpx.Limits(max_connections=conns, max_keepalive_connections=conns)) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            try:
                out.append(await stream_request(client, i, bodies[i], t0))
            except (RuntimeError, httpx.HTTPError) as err:
                errors.append(f"{type(err).__name__}: {err}")

        if s.clients is not None:
            todo = iter(range(len(bodies)))

            async def client_loop() -> None:
                for i in todo:  # one iterator shared by the clients: each takes the next request index
                    await one(i)

            await asyncio.gather(*(client_loop() for _ in range(s.clients)))
        else:
            rng, at = random.Random(seed), 0.0
            arrivals = []
            for _ in bodies:
                at += rng.expovariate(s.rate)
                arrivals.append(at)

            async def arrive(i: int) -> None:
                await asyncio.sleep(max(0.0, arrivals[i] - (time.perf_counter() - t0)))
                await one(i)

            await asyncio.gather(*(arrive(i) for i in range(len(bodies))))
        wall = max((x.end for x in out), default=time.perf_counter() - t0)
    return sorted(out, key=lambda x: x.index), errors, wall


def run_setting(args: argparse.Namespace, s: Setting, reqs: list[LoadRequest], warm: list[LoadRequest],
                batching_flag: bool) -> tuple[dict, list[Sample]]:
    bodies = [_body(r, s.mode, args.max_tokens) for r in reqs]
    with tempfile.TemporaryDirectory(prefix="chunkcache-bench-serve-") as tmp:
        flags = ["--cache-dir", tmp, *server_flags(args, s, batching_flag)]
        with LiveServer(flags, Path(tmp) / "server.log") as server:
            with httpx.Client(base_url=server.url, timeout=1800) as c:
                for body in [{"chunks": WARMUP_CHUNKS, "query": "Which river is longest?", "mode": s.mode,
                              "max_tokens": 2}] + [_body(r, s.mode, args.max_tokens) for r in warm]:
                    c.post("/generate_with_chunks", json=body).raise_for_status()
            samples, errors, wall = asyncio.run(_load(server.url, bodies, s, args.seed))
            store = server.store_bytes()
    row = {**asdict(s), **summarize(samples, wall), "errors": len(errors), "first_error": errors[0] if errors else None,
           "store_bytes": store, "working_set_exceeds_cpu_tier": store.get("disk", 0) > args.cpu_bytes}
    return row, samples


def run(args: argparse.Namespace) -> dict:
    examples = load_examples(args.data)
    pool = passage_pool(examples, args.pool)
    questions = [ex["question"] for ex in examples]
    reqs = build_requests(pool, questions, args.requests, args.passages, args.zipf, args.seed)
    warm = build_requests(pool, questions, args.warmup, args.passages, args.zipf, args.seed + 1) if args.warmup else []
    batching_flag = "--max-batch" in serve_flags()
    rows: list[dict] = []
    samples: dict[Setting, list[Sample]] = {}
    for s in settings(args):
        t = time.perf_counter()
        row, samples[s] = run_setting(args, s, reqs, warm, batching_flag)
        rows.append(row)
        print(f"{s.label()}: {row['n']} answered in {row['wall_s']:.1f}s ({time.perf_counter() - t:.0f}s with the "
              f"server start), {row['req_per_s']:.3f} req/s", flush=True)
    for s, row in zip(samples, rows, strict=True):
        full = samples.get(Setting("full", True, s.clients, s.rate))
        row["windows"] = windows(samples[s], full, args.window)
    closed = {(s.mode, s.batching, s.clients): v for s, v in samples.items() if s.clients is not None}
    return {"machine": {"cpu": cpuinfo("model name", "Hardware"), "cpus": os.cpu_count(),
                        "platform": platform.platform()},
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "chunkcache bench serve " + " ".join(shlex.quote(a) for a in args.argv),
            "config": {"requests": args.requests, "passages": args.passages, "pool": len(pool), "zipf": args.zipf,
                       "seed": args.seed, "max_tokens": args.max_tokens, "window": args.window,
                       "cpu_bytes": args.cpu_bytes, "warmup": args.warmup, "server_batching": batching_flag},
            "runs": rows, "targets": targets([r for r in rows if r["rate"] is None], closed)}


def format_table(result: dict) -> str:
    head = (f"{'mode':<7}{'batching':>9}{'load':>11}{'n':>6}{'req/s':>8}{'tok/s':>8}{'ttft p50':>10}{'p90':>8}"
            f"{'p99':>8}{'itl p50':>9}{'p99':>8}{'hit':>6}{'chunk':>7}{'vs full':>8}")
    lines = [head]
    for r in result["runs"]:
        load = f"{r['clients']} cl" if r["clients"] is not None else f"{r['rate']:g}/s"
        sp = [w["ttft_speedup_vs_full"] for w in r["windows"] if w["ttft_speedup_vs_full"] is not None]

        def f(v: float | None, w: int, p: int = 2) -> str:
            return f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"

        lines.append(f"{r['mode']:<7}{'yes' if r['batching'] else 'no':>9}{load:>11}{r['n']:>6}"
                     f"{f(r['req_per_s'], 8, 3)}{f(r['out_tok_per_s'], 8, 1)}"
                     f"{f(r['ttft_p50_s'], 10)}{f(r['ttft_p90_s'], 8)}{f(r['ttft_p99_s'], 8)}"
                     f"{f(r['itl_p50_s'], 9, 3)}{f(r['itl_p99_s'], 8, 3)}{f(r['hit_rate'], 6)}"
                     f"{f(r['chunk_hit_rate'], 7)}{f(sp[-1] if sp else None, 8)}")
    for name, t in result["targets"].items():
        if isinstance(t, dict):
            value = ("not run" if t["met"] is None
                     else f"{t['value']:.2f} (goal {t['goal']:.2f}, margin {t['margin']:+.0%})")
            lines.append(f"target {name}: {'MET' if t['met'] else 'missed' if t['met'] is not None else '-'}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through LiveServer.__exit__: no server outlives the bench

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        result = run(args)
    except ValueError as err:  # a bad setting found before any server starts (passages, zipf)
        print(f"chunkcache bench serve: error: {err}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
