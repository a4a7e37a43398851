"""`chunkcache bench rag --cold` and the decode figures of `bench rag`.

Cold: every chunk missing (a fresh memory-only store per run, same runner), so TTFT includes
computing each chunk's KV alone; compared with warm TTFT (the same request again) and with full
prefill TTFT + the time to compute the chunks alone (the floor for a cold request; aim <= 1.05x).
Ingestion: chunk KV precompute throughput (tokens/s, embedding excluded) against full prefill's
tokens/s on the same text. Decode: tokens/s of our greedy decode against HF `generate` on the same
model and prompt, both timed without the prefill (HF: t(N tokens) - t(1 token)).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from transformers.generation.streamers import BaseStreamer

from chunkcache.bench.musique import passage_text
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.runner.decode import SamplingConfig, decode
from chunkcache.store.chunk_store import ChunkStore
from chunkcache.store.config import StoreConfig


def _clock(device: torch.device) -> float:
    """perf_counter after the device's queued work is done (CUDA timings need the sync)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _fresh(engine: ChunkCacheEngine) -> ChunkCacheEngine:
    """The same runner and system prompt over an empty memory-only store: every chunk misses."""
    return ChunkCacheEngine(engine.runner, ChunkStore(StoreConfig.memory_only()), engine.system)


def cold_example(engine: ChunkCacheEngine, ex: dict, cfg: BlendConfig) -> dict:
    """Cold, warm and floor TTFT, and ingestion vs prefill throughput, for one example."""
    dev = engine.runner.device
    chunks = [passage_text(c) for c in ex["ctxs"]]
    req = engine.prompts.request(chunks, ex["question"])
    t0 = _clock(dev)
    engine.prefill(req, BlendConfig(mode="full"))
    full_s = _clock(dev) - t0
    cold_engine = _fresh(engine)
    t0 = _clock(dev)
    res = cold_engine.prefill(req, cfg)
    cold_s = _clock(dev) - t0
    assert res.stats.chunk_misses >= len(chunks)
    t0 = _clock(dev)
    cold_engine.prefill(req, cfg)
    warm_s = _clock(dev) - t0
    alone = _fresh(engine)
    t0 = _clock(dev)
    alone.precompute(chunks)  # chunks (and the system prefix) computed alone: ingestion's KV work
    chunks_s = _clock(dev) - t0
    chunk_tokens = sum(len(alone.prompts.chunk_ids(c)) for c in chunks) + len(alone.prompts.prefix_ids)
    return {"cold_ttft_s": cold_s, "warm_ttft_s": warm_s, "full_ttft_s": full_s, "chunks_alone_s": chunks_s,
            "cold_over_warm": cold_s / warm_s, "cold_over_full_plus_chunks": cold_s / (full_s + chunks_s),
            "ingest_tok_s": chunk_tokens / chunks_s, "prefill_tok_s": req.num_tokens / full_s,
            "ingest_vs_prefill": (chunk_tokens / chunks_s) / (req.num_tokens / full_s)}


def run_cold(engine: ChunkCacheEngine, examples: list[dict], base: BlendConfig, modes: list[str]) -> dict:
    """Per blended mode: medians of the per-example figures of `cold_example`."""
    out = {}
    for mode in [m for m in modes if m not in ("full", "prefix")]:
        rows = [cold_example(engine, ex, replace(base, mode=mode)) for ex in examples]
        out[mode] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return out


def decode_speed(engine: ChunkCacheEngine, ex: dict, new_tokens: int = 32) -> dict:
    """decode_tok_s (ours, greedy, EOS ignored) and decode_vs_hf on the full-prefill prompt of one example."""
    dev, r = engine.runner.device, engine.runner
    req = engine.prompts.request([passage_text(c) for c in ex["ctxs"]], ex["question"])
    res = engine.prefill(req, BlendConfig(mode="full"), reserve=new_tokens)
    sampling = SamplingConfig(max_new_tokens=new_tokens)
    t0 = _clock(dev)
    with torch.inference_mode():
        ours = list(decode(r, res.cache, res.logits, sampling, set()))
    ours_s = _clock(dev) - t0
    ids = torch.tensor([req.token_ids()], device=dev)  # [1, n]

    class Stamps(BaseStreamer):
        """Clock time of every put: the prompt, then one per generated token."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:  # type: ignore[no-untyped-def]
            self.times.append(_clock(dev))

        def end(self) -> None:
            pass

    stamps = Stamps()
    with torch.inference_mode():
        r.model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=engine.tokenizer.eos_token_id, streamer=stamps)
    hf_s = stamps.times[-1] - stamps.times[1]  # first new token (after the prefill) to the last: n - 1 steps
    ours_tok_s, hf_tok_s = (len(ours) - 1) / ours_s, (len(stamps.times) - 2) / hf_s
    return {"decode_tok_s": ours_tok_s, "hf_decode_tok_s": hf_tok_s, "decode_vs_hf": ours_tok_s / hf_tok_s,
            "decode_tokens": new_tokens}
