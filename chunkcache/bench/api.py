"""`chunkcache bench api`: HTTP overhead, a concurrent burst, and ingestion rate, against a real server.

Starts `chunkcache serve` (disk store in a temp cache dir) on a free loopback port, then:
  overhead  sequential tiny generations (2 short chunks, max_tokens=1); per request
            server time (Server-Timing header: arrival to response start) minus the model worker's
            time (stats.engine_s + stats.queue_s), and the client round trip minus the same; p50/p90.
  burst     N concurrent generations; every request must get an answer (2xx or 429); server RSS
            before, peak during, and after.
  soak      N sequential generations, each over two chunks never seen before (so every request adds KV
            to the store), with the server's CPU tier capped at --soak-cpu-bytes: server RSS after the
            first 100 requests and after all N, and the store's bytes per tier (bounded memory).
  ingest    the passages of the MuSiQue examples as one POST /documents job (one chunk per passage:
            chunk_tokens above the longest passage), with embedding, indexing and KV precompute;
            passages/s from the job's start to its finish.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from chunkcache.bench.live_server import LiveServer
from chunkcache.bench.musique import load_examples, passage_text

CHUNKS = ["The Loire is the longest river in France.", "Lyon lies where the Rhone meets the Saone."]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _server_ms(r: httpx.Response) -> float:
    return float(r.headers["server-timing"].split("dur=")[1])


def measure_overhead(client: httpx.Client, n: int) -> dict:
    req = {"chunks": CHUNKS, "query": "Which river is the longest in France?", "max_tokens": 1, "mode": "naive"}
    for _ in range(3):
        client.post("/generate_with_chunks", json=req).raise_for_status()
    server, client_rt, engine, health = [], [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/generate_with_chunks", json=req)
        rtt = (time.perf_counter() - t0) * 1e3
        r.raise_for_status()
        s = r.json()["stats"]
        worker_ms = (s["engine_s"] + s["queue_s"]) * 1e3
        server.append(_server_ms(r) - worker_ms)
        client_rt.append(rtt - worker_ms)
        engine.append(worker_ms)
        t0 = time.perf_counter()
        client.get("/healthz").raise_for_status()
        health.append((time.perf_counter() - t0) * 1e3)
    return {"requests": n, "server_overhead_ms_p50": statistics.median(server),
            "server_overhead_ms_p90": _pct(server, 0.9), "client_overhead_ms_p50": statistics.median(client_rt),
            "client_overhead_ms_p90": _pct(client_rt, 0.9), "engine_ms_p50": statistics.median(engine),
            "healthz_roundtrip_ms_p50": statistics.median(health)}


async def _burst(url: str, headers: dict, n: int) -> list[tuple[int | str, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        async def one(i: int) -> tuple[int | str, float]:
            t0 = time.perf_counter()
            try:
                r = await client.post("/generate_with_chunks", json={
                    "chunks": CHUNKS, "query": f"Question number {i}: where does the Rhone meet the Saone?",
                    "max_tokens": 4, "mode": "cacheblend"})
                return r.status_code, time.perf_counter() - t0
            except httpx.HTTPError as err:
                return type(err).__name__, time.perf_counter() - t0

        return await asyncio.gather(*(one(i) for i in range(n)))


def measure_burst(url: str, headers: dict, pid: int, n: int) -> dict:
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    results = asyncio.run(_burst(url, headers, n))
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    after = proc.memory_info().rss
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    answered = sum(v for k, v in codes.items() if k.isdigit() and (k.startswith("2") or k == "429"))
    ok = [t for c, t in results if c == 200]
    return {"requests": n, "status_counts": codes, "answered_2xx_or_429": answered, "lost": n - answered,
            "wall_s": wall, "ok_latency_s_p50": statistics.median(ok) if ok else None,
            "rss_mib_before": before / 2**20, "rss_mib_peak": max(peak) / 2**20, "rss_mib_after": after / 2**20}


def measure_soak(client: httpx.Client, pid: int, n: int, cpu_budget: int) -> dict:
    """n requests with fresh chunks; RSS (MiB) after request 1, 100 and n; tier bytes at the end."""
    proc = psutil.Process(pid)
    rss: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(n):
        chunks = [f"Record {i}-{j}: the warehouse in sector {i * 7 + j} holds {i * 13 + j} crates of item "
                  f"{(i * 31 + j) % 997}, checked on day {i % 365}." for j in range(2)]
        r = client.post("/generate_with_chunks", json={"chunks": chunks, "query": f"How many crates in record {i}-0?",
                                                       "max_tokens": 1, "mode": "naive"})
        r.raise_for_status()
        if i + 1 in (1, min(100, n), n):
            rss[str(i + 1)] = proc.memory_info().rss / 2**20
    wall = time.perf_counter() - t0
    metrics = client.get("/metrics").text
    tiers = {line.split('tier="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
             for line in metrics.splitlines() if line.startswith("chunkcache_store_bytes{")}
    after_100 = rss[str(min(100, n))]
    return {"requests": n, "seconds": wall, "rss_mib": rss, "store_bytes_by_tier": tiers,
            "cpu_budget_bytes": cpu_budget, "growth_after_100_mib": rss[str(n)] - after_100,
            "growth_after_100_vs_cpu_budget": (rss[str(n)] - after_100) * 2**20 / cpu_budget}


def measure_ingest(client: httpx.Client, data: str, n_examples: int) -> dict:
    examples = load_examples(data, n_examples)
    docs = [{"id": f"musique-{i}-{j}", "text": passage_text(c)} for i, ex in enumerate(examples)
            for j, c in enumerate(ex["ctxs"])]
    t0 = time.perf_counter()
    r = client.post("/documents", json={"documents": docs, "chunk_tokens": 1024, "overlap_tokens": 0})
    r.raise_for_status()
    job_id = r.json()["id"]
    while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if job["status"] != "done":
        raise RuntimeError(f"ingestion job failed: {job['error']}")
    res = job["result"]
    return {"examples": len(examples), "passages": len(docs), "chunks": res["chunks"],
            "new_chunks": res["new_chunks"], "tokens": res["tokens"], "seconds": wall,
            "passages_per_s": len(docs) / wall, "tokens_per_s": res["tokens"] / wall,
            "stage_seconds": res["stage_seconds"]}


def run_api_bench(args) -> dict:  # type: ignore[no-untyped-def]
    key = "bench-" + os.urandom(8).hex()
    headers = {"Authorization": f"Bearer {key}"}
    with tempfile.TemporaryDirectory(prefix="chunkcache-bench-api-") as cache:
        cfg = args.engine
        flags = [*(["--threads", str(cfg.threads)] if cfg.threads else []),
                 *(["--model", cfg.model_path] if cfg.model_path else []), "--cache-dir", cache, "--api-key", key,
                 "--max-queue", str(args.max_queue), "--cpu-bytes", str(args.soak_cpu_bytes)]
        with LiveServer(flags, Path(cache) / "server.log", startup_s=180) as server:
            url, pid = server.url, server.proc.pid  # type: ignore[union-attr]
            with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
                overhead = measure_overhead(client, args.requests)
                print(f"overhead: server p50 {overhead['server_overhead_ms_p50']:.2f} ms, client round trip p50 "
                      f"{overhead['client_overhead_ms_p50']:.2f} ms (engine p50 {overhead['engine_ms_p50']:.1f} ms)")
                burst = measure_burst(url, headers, pid, args.burst)
                print(f"burst of {args.burst}: {burst['status_counts']}, lost {burst['lost']}, RSS "
                      f"{burst['rss_mib_before']:.0f} -> peak {burst['rss_mib_peak']:.0f} -> "
                      f"{burst['rss_mib_after']:.0f} MiB")
                soak = measure_soak(client, pid, args.soak, args.soak_cpu_bytes) if args.soak else None
                if soak:
                    print(f"soak: {soak['requests']} requests with fresh chunks in {soak['seconds']:.0f}s, RSS "
                          f"{soak['rss_mib']} MiB, store bytes {soak['store_bytes_by_tier']}")
                ingest = measure_ingest(client, args.data, args.ingest_examples) if args.ingest_examples else None
                if ingest:
                    print(f"ingest: {ingest['passages']} passages in {ingest['seconds']:.1f}s = "
                          f"{ingest['passages_per_s']:.2f} passages/s ({ingest['tokens_per_s']:.0f} tokens/s)")
    summary = {"http_overhead_server_ms_p50": overhead["server_overhead_ms_p50"],
               "http_overhead_client_ms_p50": overhead["client_overhead_ms_p50"],
               "burst_status_counts": burst["status_counts"], "burst_lost": burst["lost"],
               "burst_rss_mib": [burst["rss_mib_before"], burst["rss_mib_peak"], burst["rss_mib_after"]],
               "soak_rss_mib": soak["rss_mib"] if soak else None,
               "ingest_passages_per_s": ingest["passages_per_s"] if ingest else None}
    return {"summary": summary, "overhead": overhead, "burst": burst, "soak": soak, "ingest": ingest,
            "config": {"requests": args.requests, "burst": args.burst, "max_queue": args.max_queue,
                       "soak": args.soak, "soak_cpu_bytes": args.soak_cpu_bytes,
                       "threads": args.engine.threads, "cpu_count": os.cpu_count(),
                       "model": args.engine.model_path or "SmolLM2-135M-Instruct"}}
