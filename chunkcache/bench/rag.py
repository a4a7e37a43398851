"""`chunkcache bench rag`: TTFT and fidelity of every mode against full prefill on MuSiQue.

For each example all modes see identical token ids; chunk KV is precomputed and in memory before
timing. TTFT = blender prefill to first-token logits. Speedups are medians of per-example paired
ratios (full TTFT / mode TTFT) measured in the same run.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace

import torch

from chunkcache.bench.dominance import KL_ONLY, dominance
from chunkcache.bench.metrics import best_f1, teacher_forced, token_f1
from chunkcache.bench.musique import passage_text
from chunkcache.bench.teacher_forcing import greedy, tf_logits
from chunkcache.blend.blender import BlendResult
from chunkcache.blend.config import DEFAULT_MODE, FUSED_MODES, RATIO_FREE_MODES, BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.fusion import FUSION_NEIGHBOURS, fuse, precompute_fused
from chunkcache.blend.request import BlendRequest
from chunkcache.retrieval.embedder import Embedder


def timed_prefill(engine: ChunkCacheEngine, req: BlendRequest, cfg: BlendConfig, reserve: int, repeats: int = 1):
    """The last prefill's result and the median wall time of `repeats` prefills of the same request."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = engine.prefill(req, cfg, reserve)
        times.append(time.perf_counter() - t0)
    return res, statistics.median(times)


def _tf_logits(engine: ChunkCacheEngine, res: BlendResult, answer: list[int]) -> torch.Tensor:
    return tf_logits(engine.runner, res.cache, res.logits, answer, correction=res.correction)


def _greedy(engine: ChunkCacheEngine, res: BlendResult, max_new: int) -> tuple[list[int], int | None]:
    """The greedy answer over res (its correction replayed on a fresh copy), and after how many fed tokens the
    correction's gate finished it (None: it did not)."""
    fresh = res.correction.fresh() if res.correction is not None else None
    ids = greedy(engine.runner, res.cache, res.logits, max_new, engine.eos_ids, fresh, copy=False)
    return ids, fresh.finished_at if fresh is not None else None


def _text(engine: ChunkCacheEngine, ids: list[int]) -> str:
    return engine.tokenizer.decode([t for t in ids if t not in engine.eos_ids], skip_special_tokens=True).strip()


def evaluate_request(engine: ChunkCacheEngine, chunks: list[str], req: BlendRequest, configs: dict[str, BlendConfig],
                     max_new: int, free_run: bool = True, repeats: int = 1, fused: BlendRequest | None = None) -> dict:
    """Per-mode figures of one request over `chunks` (precomputed first). configs: label -> BlendConfig (full is
    added); labels with equal configs run once and share one row. repeats: each TTFT is the median of this many
    prefills (full included), which damps a shared machine's interference. Rows hold the free-run `answer`, its
    `new_tokens` (EOS included) and its decode time: `decode_s` for the answer after the first token, `tpot_s` per
    decode forward.
    fused: req with its fused contexts (blend/fusion.py), what mode fusion runs on (its entries precomputed)."""
    engine.precompute(chunks)
    full, full_t = timed_prefill(engine, req, BlendConfig(mode="full"), max_new, repeats)
    n = full.cache.length
    t0 = time.perf_counter()
    answer, _ = _greedy(engine, full, max_new)
    full_decode = time.perf_counter() - t0
    full.cache.truncate(n)
    ref = _tf_logits(engine, full, answer)
    full_text = _text(engine, answer)
    out = {"full": {"ttft_s": full_t, "answer": full_text, "tf_top1": 1.0, "tf_kl": 0.0, "fidelity_f1": 1.0,
                    "first_token": 1.0, "recompute_fraction": 1.0, "prompt_tokens": req.num_tokens,
                    "tpot_s": full_decode / max(1, len(answer) - 1), "decode_s": full_decode,
                    "new_tokens": len(answer)}}
    del full
    labels_of: dict[BlendConfig, list[str]] = {}
    for label, cfg in configs.items():
        labels_of.setdefault(cfg, []).append(label)
    for cfg, labels in labels_of.items():
        if cfg.mode in FUSED_MODES and fused is None:
            raise ValueError(f"fused: mode {cfg.mode} needs the request with its fused contexts "
                             "(blend/fusion.with_fused)")
        res, t = timed_prefill(engine, fused if cfg.mode in FUSED_MODES else req, cfg, max_new, repeats)
        top1, kl = teacher_forced(ref, _tf_logits(engine, res, answer))
        row = {"ttft_s": t, "tf_top1": top1, "tf_kl": kl, "speedup": full_t / t,
               "recompute_fraction": res.stats.recompute_fraction, "decode_pending": res.stats.decode_pending,
               "decode_per_step": res.correction.per_step if res.correction else 0}
        if free_run:
            t0 = time.perf_counter()
            ids, gated_at = _greedy(engine, res, max_new)
            decode_s = time.perf_counter() - t0
            row.update(tpot_s=decode_s / max(1, len(ids) - 1), decode_s=decode_s, new_tokens=len(ids))  # per forward
            if cfg.correction_gate:
                row["gated_at"] = gated_at
            text = _text(engine, ids)
            row.update(answer=text, fidelity_f1=token_f1(text, full_text) if full_text else float(text == full_text),
                       first_token=float(ids[:1] == answer[:1]))
        for label in labels:
            out[label] = row
    return out


def fused_request(engine: ChunkCacheEngine, req: BlendRequest, vectors, reuse: bool = False,
                  n: int = FUSION_NEIGHBOURS) -> tuple[BlendRequest, dict]:
    """req with its fused contexts, their entries precomputed with their anchors, as ingestion does (the
    example's chunks as the corpus; vectors [n_chunks, dim]: their embeddings), and the ingestion cost beyond
    the plain precompute: {fusion_extra_tokens, fusion_precompute_s, anchors_s, plain_tokens, fused_computed}.
    reuse: entries (and anchors) the store holds are kept, and fusion_extra_tokens counts only what was computed
    (default: every entry recomputed, to measure the cost). n: neighbours per chunk."""
    t0 = time.perf_counter()
    fused = fuse(req, engine.source.context_ids, vectors, n)
    _, extra, computed = precompute_fused(engine.source, fused.chunks, fused.fused, reuse)
    t1 = time.perf_counter()
    for ids, ctx in zip(fused.chunks, fused.fused, strict=True):
        engine.warm_anchors(ids, ctx)
    cost = {"fusion_precompute_s": t1 - t0, "anchors_s": time.perf_counter() - t1,
            "plain_tokens": sum(map(len, req.chunks)), "fusion_extra_tokens": extra,
            "fused_computed": computed}
    return fused, cost


def evaluate_example(engine: ChunkCacheEngine, ex: dict, configs: dict[str, BlendConfig], max_new: int,
                     free_run: bool = True, repeats: int = 1, embedder: Embedder | None = None) -> dict:
    """evaluate_request on one MuSiQue-format example, each free-run answer scored (`f1`) against the gold. A
    fusion config runs on the example's fused request (embedder: the chunks' embeddings for their neighbours)."""
    chunks = [passage_text(c) for c in ex["ctxs"]]
    req, fused = engine.prompts.request(chunks, ex["question"]), None
    if any(c.mode in FUSED_MODES for c in configs.values()):
        engine.precompute(chunks)
        fused, _ = fused_request(engine, req, (embedder or Embedder()).encode(chunks))
    out = evaluate_request(engine, chunks, req, configs, max_new, free_run, repeats, fused)
    for row in out.values():
        if "answer" in row:
            row["f1"] = best_f1(row["answer"], ex["answers"])
    return out


def summarize(rows: list[dict]) -> dict:
    """Aggregate per-example rows into the JSON `modes` section."""
    modes = {}
    for label in rows[0]:
        per = [r[label] for r in rows]
        ttft = [p["ttft_s"] for p in per]
        mean = lambda key: statistics.fmean(p[key] for p in per) if key in per[0] else None  # noqa: E731
        modes[label] = {
            "ttft_s_median": statistics.median(ttft), "ttft_s_mean": statistics.fmean(ttft),
            "ttft_speedup_vs_full_median": statistics.median(p.get("speedup", 1.0) for p in per),
            "tf_top1_agreement": mean("tf_top1"), "tf_kl_mean": mean("tf_kl"), "f1_mean": mean("f1"),
            "fidelity_f1_mean": mean("fidelity_f1"), "first_token_agreement": mean("first_token"),
            "recompute_fraction": mean("recompute_fraction"),
        }
    return modes


def pareto_configs(modes: list[str], ratios: list[float], base: BlendConfig) -> dict[str, BlendConfig]:
    """Label -> config of the Pareto sweep: `mode@ratio` for every ratio, or `mode` once for the modes whose
    cost has no ratio (full is the reference, always measured). epic sweeps k budget-matched (epic_k=0)."""
    out = {}
    for m in modes:
        if m in RATIO_FREE_MODES:
            if m != "full":
                out[m] = replace(base, mode=m)
            continue
        for r in ratios:
            out[f"{m}@{r}"] = replace(base, mode=m, recompute_ratio=r, epic_k=0 if m == "epic" else base.epic_k)
    return out


PARETO_KEYS = ("ttft_speedup_vs_full_median", "tf_top1_agreement", "tf_kl_mean", "fidelity_f1_mean", "f1_mean",
               "recompute_fraction")


def pareto_rows(summary: dict, modes: list[str], ratios: list[float], keys: tuple[str, ...] = PARETO_KEYS
                ) -> list[dict]:
    """The JSON `pareto` list: one row per (mode, ratio), ratio-free modes once (ratio = recomputed share)."""
    rows = []
    for m in modes:
        if m in RATIO_FREE_MODES:
            points = [(summary[m]["recompute_fraction"], m)]
        else:
            points = [(r, f"{m}@{r}") for r in ratios]
        for ratio, label in points:
            rows.append({"mode": m, "ratio": ratio, **{k: summary[label][k] for k in keys}})
    return rows


def run_rag(engine: ChunkCacheEngine, examples: list[dict], modes: list[str], base: BlendConfig,
            max_new: int = 32, log=print, ratios: list[float] | None = None, repeats: int = 1) -> dict:
    """`modes.<mode>` at base.recompute_ratio; with `ratios`, also the `pareto` rows of every mode at every
    ratio, all from one pass per example (same token ids, full prefill once, each distinct config once)."""
    configs = {m: replace(base, mode=m) for m in modes if m != "full"}
    if ratios:
        configs.update(pareto_configs(modes, ratios, base))
    rows, embedder = [], Embedder() if set(modes) & set(FUSED_MODES) else None
    for i, ex in enumerate(examples):
        row = evaluate_example(engine, ex, configs, max_new, repeats=repeats, embedder=embedder)
        rows.append(row)
        log(f"[{i + 1}/{len(examples)}] " + "  ".join(
            f"{m}: {r['ttft_s']:.2f}s top1={r['tf_top1']:.3f} kl={r['tf_kl']:.3f}" for m, r in row.items()))
    summary = summarize(rows)
    out = {"modes": {k: v for k, v in summary.items() if (k in configs and "@" not in k) or k == "full"},
           "examples": rows}
    if ratios:
        out["pareto"] = pareto_rows(summary, modes, ratios)
        if DEFAULT_MODE in modes:
            out["dominance"] = {"default": DEFAULT_MODE, "rows": dominance(out["pareto"], DEFAULT_MODE, KL_ONLY)}
    return out


PANELS = (("tf_kl_mean", "mean teacher-forced KL vs full"), ("tf_top1_agreement", "teacher-forced top-1 agreement"))


def plot_pareto(pareto: list[dict], path: str, panels: tuple[tuple[str, str], ...] = PANELS) -> None:
    """Each panel's key (default KL and top-1) against TTFT speedup, one line per mode; full, naive and ape as
    marked points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    axes = axes[0]
    for m in dict.fromkeys(r["mode"] for r in pareto):
        pts = sorted((r for r in pareto if r["mode"] == m), key=lambda r: r["ttft_speedup_vs_full_median"])
        x = [r["ttft_speedup_vs_full_median"] for r in pts]
        style = {"full": "k*", "naive": "rX", "ape": "mD", "prefix": "cs"}.get(m, "o-")
        for ax, (key, _) in zip(axes, panels, strict=True):
            ax.plot(x, [r[key] for r in pts], style, label=m, markersize=9 if len(pts) == 1 else 5)
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("TTFT speedup vs full prefill (median, log)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_sweep(engine: ChunkCacheEngine, examples: list[dict], ratios: list[float], base: BlendConfig,
              max_new: int = 32, log=print) -> dict:
    """Fidelity and speedup vs recompute ratio, deviation-based and random selection."""
    configs = {}
    for r in ratios:
        configs[f"deviation@{r}"] = replace(base, mode="cacheblend", recompute_ratio=r)
        configs[f"random@{r}"] = replace(base, mode="cacheblend", recompute_ratio=r, selection="random")
    rows = []
    for i, ex in enumerate(examples):
        rows.append(evaluate_example(engine, ex, configs, max_new, free_run=False))
        log(f"[sweep {i + 1}/{len(examples)}] done")
    modes = summarize(rows)
    return {"ratios": ratios, "modes": modes}


def plot_sweep(sweep: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sweep["ratios"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for sel, style in (("deviation", "o-"), ("random", "s--")):
        m = [sweep["modes"][f"{sel}@{r}"] for r in ratios]
        axes[0].plot(ratios, [x["tf_top1_agreement"] for x in m], style, label=sel)
        axes[1].plot(ratios, [x["tf_kl_mean"] for x in m], style, label=sel)
        axes[2].plot(ratios, [x["ttft_speedup_vs_full_median"] for x in m], style, label=sel)
    titles = ("teacher-forced top-1 agreement", "mean KL vs full", "TTFT speedup vs full")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("recompute ratio")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_json(obj: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
