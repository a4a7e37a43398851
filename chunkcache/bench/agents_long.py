"""`chunkcache bench agents --turns N`: a long discussion, to show the agents' memory stays bounded.

The agents discuss MuSiQue questions one after another (each over a short passage, two fully connected
rounds per question, a few generated tokens per turn) until N turns have run, all on one AgentRuntime
whose store is a CPU tier of `cpu_budget` bytes: response KV, placeholder bases and anchor tensors are all
entries there. Reported: peak RSS at turn 100 (after the warm-up) and at turn N, the growth between
them as a share of the CPU budget (target: at most 10%), and the store's bytes per tier at both points.
"""

from __future__ import annotations

import gc
import time

import psutil
import torch

from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.workflows import Agent
from chunkcache.bench.musique import passage_text
from chunkcache.blend.config import BlendConfig
from chunkcache.runner.decode import SamplingConfig
from chunkcache.runner.runner import ModelRunner


def _snapshot(rt: AgentRuntime, turn: int, peak: int, t0: float, reused: int, prompt: int) -> dict:
    tiers = rt.store.stats()["tiers"]
    return {"turn": turn, "rss_peak_bytes": peak, "rss_bytes": psutil.Process().memory_info().rss,
            "store_bytes_by_tier": {t: v["bytes"] for t, v in tiers.items()},
            "store_entries_by_tier": {t: v["entries"] for t, v in tiers.items()},
            "evictions": sum(v.get("evictions", 0) for v in tiers.values()),
            "anchors": len(rt.pool), "elapsed_s": time.perf_counter() - t0,
            "reuse_rate_so_far": reused / max(1, prompt)}


def run_long(runner: ModelRunner, examples: list[dict], agents: list[Agent], turns: int, mode: str = "kvcomm+blend",
             cpu_budget: int = 256 * 2**20, passage_tokens: int = 48, max_new: int = 2, checkpoint: int = 100,
             log=print) -> dict:
    """Run `turns` turns; snapshots at `checkpoint` and at the end (peak RSS sampled after every turn)."""
    if turns <= checkpoint:
        raise ValueError(f"--turns must exceed the checkpoint turn {checkpoint}, got {turns}")
    rt = AgentRuntime(runner, store_bytes=cpu_budget)
    cfg = BlendConfig.named(mode)
    sampling = SamplingConfig(max_new_tokens=max_new)
    proc, peak, done, reused, prompt = psutil.Process(), 0, 0, 0, 0
    snaps, t0, i = [], time.perf_counter(), 0
    while done < turns:
        ex = examples[i % len(examples)]
        ids = rt.tokenizer.encode(passage_text(ex["ctxs"][i % len(ex["ctxs"])]), add_special_tokens=False)
        context = rt.tokenizer.decode(ids[:passage_tokens])
        previous = None
        for r in (1, 2):
            if done >= turns:
                break
            n = min(len(agents), turns - done)
            if previous is not None and n < len(agents):
                break  # a partial second round: stop at a round boundary
            turns_r = rt.round(agents, ex["question"], context, previous, cfg, sampling, r)
            previous = {t.agent: t.message for t in turns_r}
            for t in turns_r:
                done += 1
                reused += t.stats.reused_tokens
                prompt += t.stats.prompt_tokens
                peak = max(peak, proc.memory_info().rss)
                if done == checkpoint:
                    gc.collect()
                    snaps.append(_snapshot(rt, done, peak, t0, reused, prompt))
                    log(f"turn {done}: rss peak {peak / 2**20:.1f} MiB, store {snaps[-1]['store_bytes_by_tier']}")
        i += 1
        if i % 20 == 0:
            log(f"turn {done}/{turns}: rss peak {peak / 2**20:.1f} MiB, anchors {len(rt.pool)}")
    gc.collect()
    snaps.append(_snapshot(rt, done, peak, t0, reused, prompt))
    growth = snaps[-1]["rss_peak_bytes"] - snaps[0]["rss_peak_bytes"]
    rt.close()
    return {"mode": mode, "turns": done, "cpu_budget_bytes": cpu_budget, "checkpoints": snaps,
            "rss_peak_growth_after_checkpoint_bytes": growth,
            "rss_peak_growth_fraction_of_cpu_budget": growth / cpu_budget,
            "target_fraction": 0.10, "meets_target": growth <= 0.10 * cpu_budget,
            "workload": {"agents": len(agents), "rounds_per_question": 2, "passage_tokens": passage_tokens,
                         "max_new_tokens": max_new, "threads": torch.get_num_threads()}}
