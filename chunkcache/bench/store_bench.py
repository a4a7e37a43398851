"""`chunkcache bench store --json OUT`: chunk store bandwidth, latency, eviction and compression figures.

Top-level JSON keys: cpu_get_vs_copy and disk_read_vs_dd (achieved bandwidth / baseline bandwidth,
same run), cpu_get, disk_read, put, redis, layer_stream, eviction_zipf, compression, config, machine.
Chunks have SmolLM2-135M's KV shape (30 layers, 3 KV heads, head_dim 64, fp32) by default.
Disk reads are cold: before each timed read (ours and dd's) the file's pages are dropped from the
OS page cache with posix_fadvise(POSIX_FADV_DONTNEED) (files were fsync'd, so the pages are clean
and really leave the cache), and the disk tier itself reads whole entries with O_DIRECT. The dd
baseline is the faster of `dd bs=4M` and `dd bs=4M iflag=direct` to /dev/null (dd's own time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from chunkcache.config.arg_types import positive
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.codec import Int8ChannelCodec
from chunkcache.store.config import StoreConfig, TierConfig
from chunkcache.store.eviction import estimate_recompute_cost
from chunkcache.store.keys import chunk_key

FP = "bench-model"


def make_chunk(seed: int, tokens: int, layers: int, heads: int, dim: int,
               dtype: torch.dtype = torch.float32) -> ChunkKV:
    g = torch.Generator().manual_seed(seed)
    ids = tuple((seed * 1009 + i) % 49152 for i in range(tokens))
    shape = (layers, heads, tokens, dim)
    scale = torch.logspace(-1, 1, dim)  # channels of different magnitude, like real K/V
    return ChunkKV(chunk_key(FP, [seed], ids), FP, ids, 1, (torch.randn(shape, generator=g) * scale).to(dtype),
                   (torch.randn(shape, generator=g) * scale).to(dtype))


def _best(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_cpu(chunks: list[ChunkKV], reps: int) -> dict[str, float]:
    store = ChunkStore(StoreConfig.memory_only(1 << 40))
    nbytes = sum(c.nbytes for c in chunks)
    t_put = _best(lambda: [store.put(c) for c in chunks], 1)
    t_get = _best(lambda: [store.get(c.key, FP) for c in chunks], reps)
    t_copy = _best(lambda: [(c.keys.clone(), c.values.clone()) for c in chunks], reps)
    return {"bytes": nbytes, "get_GBps": nbytes / t_get / 1e9, "torch_clone_GBps": nbytes / t_copy / 1e9,
            "put_GBps": nbytes / t_put / 1e9, "ratio": t_copy / t_get}


def _dd_GBps(path: Path, direct: bool = False) -> float:
    _drop(path)
    cmd = ["dd", f"if={path}", "of=/dev/null", "bs=4M"] + (["iflag=direct"] if direct else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.,e-]+) s", r.stderr)
    if not m:
        raise RuntimeError(f"unexpected dd output: {r.stderr}")
    return int(m.group(1)) / float(m.group(2).replace(",", ".")) / 1e9


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_disk(chunks: list[ChunkKV], root: Path, reps: int) -> dict[str, object]:
    cfg = StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(root))
    store = ChunkStore(cfg)
    disk = store.tier("disk")
    t0 = time.perf_counter()
    for c in chunks:
        store.put(c)
    t_put = time.perf_counter() - t0
    paths = [disk.path(c.key) for c in chunks]
    nbytes = sum(p.stat().st_size for p in paths)
    ours, dds = [], []
    same_size = root / "dd_same_size.bin"
    with open(same_size, "wb") as f:
        f.write(os.urandom(paths[0].stat().st_size))
        os.fsync(f.fileno())
    for _ in range(reps):
        t = 0.0
        for c, p in zip(chunks, paths, strict=True):
            _drop(p)
            t0 = time.perf_counter()
            assert store.get(c.key, FP) is not None
            t += time.perf_counter() - t0
        ours.append(nbytes / t / 1e9)
        dds.append(max(sum(_dd_GBps(same_size, direct) for _ in chunks) / len(chunks) for direct in (False, True)))
    store.close()
    return {"files": len(paths), "bytes": nbytes, "get_cold_GBps": max(ours), "dd_cold_GBps": max(dds),
            "ratio": max(ours) / max(dds), "put_fsync_GBps": nbytes / t_put / 1e9,
            "put_chunks_per_s": len(chunks) / t_put,
            "page_cache_bypass": "posix_fadvise(DONTNEED) on the file before each read; the store reads with "
                                 "O_DIRECT; dd baseline = the faster of dd bs=4M buffered and dd bs=4M iflag=direct"}


def bench_layer_stream(chunk: ChunkKV, root: Path, compute_ms: float) -> dict[str, float]:
    """Per-layer consumer that 'computes' compute_ms per layer (sleep: no CPU contention)."""
    cfg = StoreConfig(tiers=(TierConfig("cpu", budget_bytes=1 << 34), TierConfig("disk", write_through=True)),
                      cache_dir=str(root), promote_on_hit=False)
    out = {}
    with ChunkStore(cfg) as store:
        store.put(chunk)
        store.flush()  # the disk copy is written in the background
        disk_only = ChunkStore(StoreConfig(tiers=(TierConfig("disk"),), cache_dir=str(root)))
        for name, s in (("cpu", store), ("disk", disk_only)):
            _drop(store.tier("disk").path(chunk.key))
            t0 = time.perf_counter()
            for _ in s.get_layers(chunk.key, FP):
                time.sleep(compute_ms / 1000)
            out[f"{name}_s"] = time.perf_counter() - t0
        disk_only.close()
    out["compute_only_s"] = chunk.keys.shape[0] * compute_ms / 1000
    out["disk_over_cpu"] = out["disk_s"] / out["cpu_s"]
    return out


def bench_redis(chunks: list[ChunkKV], url: str | None) -> dict[str, object]:
    server = None
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            return {"skipped": "no --redis-url and no redis-server binary"}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        store = ChunkStore(StoreConfig(tiers=(TierConfig("remote", url=url),), catalog=False))
        t0 = time.perf_counter()
        for c in chunks:
            assert store.put(c)
        t_put = time.perf_counter() - t0
        t0 = time.perf_counter()
        for c in chunks:
            assert store.get(c.key, FP) is not None
        t_get = time.perf_counter() - t0
        small = make_chunk(10_000, 16, 30, 3, 64)
        store.put(small)
        t_small = _best(lambda: store.get(small.key, FP), 20)
        store.close()
        nbytes = sum(c.nbytes for c in chunks)
        return {"url": "loopback redis-server" if server else url, "chunk_MB": chunks[0].nbytes / 1e6,
                "put_ms_per_chunk": 1e3 * t_put / len(chunks), "get_ms_per_chunk": 1e3 * t_get / len(chunks),
                "get_GBps": nbytes / t_get / 1e9, "get_ms_16_token_chunk": 1e3 * t_small}
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def bench_zipf(n_chunks: int, n_requests: int, alpha: float, seed: int) -> dict[str, object]:
    """Real ChunkStore CPU tier with tiny tensors whose sizes follow chunk lengths 64..1024 tokens."""
    rng = random.Random(seed)
    lengths = [rng.choice([64, 128, 256, 512, 1024]) for _ in range(n_chunks)]
    chunks = [ChunkKV(chunk_key(FP, [], (i,)), FP, tuple(range(n)), 0, torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))
              for i, n in enumerate(lengths)]
    costs = [estimate_recompute_cost(n, 30) for n in lengths]
    ranks = list(range(n_chunks))
    rng.shuffle(ranks)
    trace = rng.choices(ranks, weights=[1 / (r + 1) ** alpha for r in range(n_chunks)], k=n_requests)
    total_bytes, total_cost = sum(c.nbytes for c in chunks), sum(costs[i] for i in trace)
    out: dict[str, object] = {"chunks": n_chunks, "requests": n_requests, "zipf_alpha": alpha, "results": []}
    for frac in (0.05, 0.1, 0.2):
        row: dict[str, object] = {"budget_fraction": frac}
        for policy in ("lru", "cost"):
            store = ChunkStore(StoreConfig.memory_only(int(frac * total_bytes), policy=policy))
            hits, saved = 0, 0.0
            for i in trace:
                if store.get(chunks[i].key, FP) is not None:
                    hits += 1
                    saved += costs[i]
                else:
                    store.put(chunks[i], recompute_cost=costs[i])
            row[f"{policy}_hit_ratio"] = hits / n_requests
            row[f"{policy}_cost_saved"] = saved / total_cost
        out["results"].append(row)  # type: ignore[union-attr]
    return out


def bench_compression(chunk: ChunkKV, root: Path) -> dict[str, object]:
    codec = Int8ChannelCodec()
    out: dict[str, object] = {}
    for dtype in (torch.float32, torch.bfloat16):
        c = ChunkKV(chunk.key, FP, chunk.token_ids, 1, chunk.keys.to(dtype), chunk.values.to(dtype))
        sizes = {}
        for name in ("none", "int8"):
            with ChunkStore(StoreConfig(tiers=(TierConfig("disk", codec=name),), cache_dir=str(root / name),
                                        catalog=False)) as store:
                store.put(c)
                sizes[name] = store.tier("disk").path(c.key).stat().st_size
        dec = codec.decode(codec.encode(c.keys), torch.float32)
        rel = ((dec - c.keys.float()).norm() / c.keys.float().norm()).item()
        out[str(dtype).removeprefix("torch.")] = {"file_bytes_none": sizes["none"], "file_bytes_int8": sizes["int8"],
                                                  "ratio": sizes["none"] / sizes["int8"], "keys_rel_l2_error": rel}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chunkcache bench store", description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="write results here")
    ap.add_argument("--tokens", type=positive, default=512)
    ap.add_argument("--chunks", type=positive, default=6)
    ap.add_argument("--layers", type=positive, default=30)
    ap.add_argument("--kv-heads", type=positive, default=3)
    ap.add_argument("--head-dim", type=positive, default=64)
    ap.add_argument("--reps", type=positive, default=3)
    ap.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: a temp dir)")
    ap.add_argument("--redis-url", default=None, help="default: start a loopback redis-server if installed")
    ap.add_argument("--zipf-requests", type=positive, default=20000)
    ap.add_argument("--layer-compute-ms", type=float, default=10.0)
    a = ap.parse_args(argv)
    chunks = [make_chunk(i, a.tokens, a.layers, a.kv_heads, a.head_dim) for i in range(a.chunks)]
    root = Path(tempfile.mkdtemp(prefix="chunkcache-bench-", dir=a.dir))
    try:
        cpu = bench_cpu(chunks, a.reps)
        disk = bench_disk(chunks, root / "disk", a.reps)
        res = {
            "cpu_get_vs_copy": cpu["ratio"], "disk_read_vs_dd": disk["ratio"],
            "cpu_get": cpu, "disk_read": disk,
            "put": {"cpu_GBps": cpu["put_GBps"], "disk_fsync_GBps": disk["put_fsync_GBps"],
                    "disk_chunks_per_s": disk["put_chunks_per_s"]},
            "layer_stream": bench_layer_stream(chunks[0], root / "stream", a.layer_compute_ms),
            "redis": bench_redis(chunks[:3], a.redis_url),
            "eviction_zipf": bench_zipf(400, a.zipf_requests, 1.0, 0),
            "compression": bench_compression(chunks[0], root / "codec"),
            "config": vars(a) | {"chunk_MB": chunks[0].nbytes / 1e6},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("cpu_get_vs_copy", "disk_read_vs_dd")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
