"""`chunkcache bench tasks`: every mode against full prefill on a standard suite (task score, agreement with
full prefill's answer, teacher-forced KL / top-1, TTFT speedup).

Per example, every mode (full and naive included) runs on the same token ids (bench/rag.evaluate_request:
chunk KV precomputed and in memory, full prefill's greedy answer as the teacher-forcing reference). The
fidelity figures are deterministic, so each example is prefilled once per mode; only the first `timed`
examples of each setting are timed, each TTFT the median of `repeats` prefills, and the speedup is the
median of their paired ratios (full TTFT / mode TTFT). The Pareto sweep (every mode at every ratio) runs on
the first `pareto_limit` examples of each setting. Gated suites (niah, vt) first run full prefill alone on
every setting and run the modes only where its mean score reaches `min_full_score`. Recall suites also report
needles_kept_of_full: of the needles full prefill's answers found, the share each mode's answers found too (pooled),
a fidelity figure that holds where full prefill's own recall is low.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from chunkcache.bench.dominance import DOMINANCE, dominance
from chunkcache.bench.rag import evaluate_request, fused_request, pareto_configs, pareto_rows
from chunkcache.bench.tasks.example import TaskExample
from chunkcache.bench.tasks.metrics import agreement, needles_kept, task_scores
from chunkcache.bench.tasks.suites import Suite
from chunkcache.blend.config import DEFAULT_MODE, FUSED_MODES, RATIO_FREE_MODES, BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.prompt import PromptBuilder
from chunkcache.blend.request import BlendRequest
from chunkcache.retrieval.embedder import Embedder

KEYS = ("task_score", "agreement_f1", "agreement_exact", "tf_kl_mean", "tf_top1_agreement",
        "ttft_speedup_vs_full_median", "recompute_fraction", "n")


@dataclass(frozen=True)
class TasksConfig:
    """modes: mode names, full first (added when missing); base: every mode's config but its name (its
    recompute_ratio is --recompute-ratio); ratios: the Pareto sweep's ratios (empty: none); timed, pareto_limit:
    per setting, see the module docstring; min_full_score: the gate of gated suites (0: no gate run);
    reuse_fused: fused entries the store holds (an earlier run's on the same examples) are kept, so a rerun
    measures fidelity and TTFT but not the fused precompute's cost (its rows then say fused_computed 0)."""

    modes: tuple[str, ...]
    base: BlendConfig = BlendConfig()
    ratios: tuple[float, ...] = ()
    max_new: int = 32
    repeats: int = 3
    timed: int = 20
    pareto_limit: int = 100
    min_full_score: float = 0.8
    reuse_fused: bool = False

    def __post_init__(self) -> None:
        for m in self.modes:
            BlendConfig(mode=m)  # a clear error naming the mode
        if "full" not in self.modes:
            object.__setattr__(self, "modes", ("full", *self.modes))
        if self.max_new < 1 or self.repeats < 1:
            raise ValueError(f"max_new and repeats must be >= 1, got {self.max_new}, {self.repeats}")
        if self.timed < 0 or self.pareto_limit < 0:
            raise ValueError(f"timed and pareto_limit must be >= 0, got {self.timed}, {self.pareto_limit}")
        if not 0.0 <= self.min_full_score <= 1.0:
            raise ValueError(f"min_full_score must be in [0, 1], got {self.min_full_score}")
        if any(not 0.0 <= r <= 1.0 for r in self.ratios):
            raise ValueError(f"ratios must be in [0, 1], got {self.ratios}")


def task_request(prompts: PromptBuilder, ex: TaskExample) -> BlendRequest:
    """The example as the engine's prompt: its chunks, its question, and its answer prefix (if any) opening
    the assistant turn (part of the always-computed suffix)."""
    req = prompts.request(list(ex.chunks), ex.question)
    if not ex.answer_prefix:
        return req
    t = prompts.template
    suffix = prompts.encode(t.question_text.format(question=ex.question) + t.suffix_text + ex.answer_prefix)
    return BlendRequest.of(req.prefix_ids, req.chunks, suffix)


def score_rows(rows: dict[str, dict], ex: TaskExample, kind: str) -> dict[str, dict]:
    """Add task_score (and em), agreement_exact and agreement_f1 to each mode's row (rows shared by equal
    configs are scored once); recall suites also count the needles full prefill's answer found and the row kept."""
    full_text = rows["full"]["answer"]
    for row in {id(r): r for r in rows.values()}.values():
        row.update(task_scores(kind, row["answer"], ex.answers), **agreement(row["answer"], full_text))
        if kind == "recall":
            row.update(needles_kept(row["answer"], full_text, ex.answers))
    return rows


def summarize(rows: list[dict], label: str) -> dict:
    """The JSON figures of one label over the example rows that ran it; over the timed ones, the TTFT speedup, the
    paired ratio of time per decode forward (tpot: what decode-time correction costs) and of time to the whole
    answer."""
    per = [r["modes"][label] for r in rows if label in r["modes"]]
    timed = [r["modes"][label] for r in rows if label in r["modes"] and r["timed"]]
    mean = lambda key: statistics.fmean(p[key] for p in per)  # noqa: E731
    out = {"task_score": mean("task_score"), "agreement_f1": mean("agreement_f1"),
           "agreement_exact": mean("agreement_exact"), "tf_kl_mean": mean("tf_kl"),
           "tf_top1_agreement": mean("tf_top1"),
           "ttft_speedup_vs_full_median": statistics.median(p.get("speedup", 1.0) for p in timed) if timed else None,
           "recompute_fraction": mean("recompute_fraction"), "n": len(per), "n_timed": len(timed),
           "ttft_s_median": statistics.median(p["ttft_s"] for p in timed) if timed else None,
           "tpot_ratio_vs_full_median": tpot_ratio(rows, label),
           "answer_speedup_vs_full_median": answer_speedup(rows, label)}
    if "em" in per[0]:
        out["em"] = mean("em")
    if all("needles_full" in p for p in per):  # pooled: of the needles full found, the share this mode kept
        found = sum(p["needles_full"] for p in per)
        out["needles_kept_of_full"] = sum(p["needles_kept"] for p in per) / found if found else None
    return out


def paired_median(rows: list[dict], label: str, key: str, ratio) -> float | None:
    """Median over the timed rows where label's and full prefill's results both carry `key` of
    ratio(label's, full's) (None: not measured)."""
    pairs = [ratio(r["modes"][label], r["modes"]["full"]) for r in rows
             if r["timed"] and key in r["modes"].get(label, {}) and key in r["modes"]["full"]]
    return statistics.median(pairs) if pairs else None


def tpot_ratio(rows: list[dict], label: str) -> float | None:
    """Paired median of label's time per decode forward / full prefill's."""
    return paired_median(rows, label, "tpot_s", lambda m, full: m["tpot_s"] / full["tpot_s"])


def answer_speedup(rows: list[dict], label: str) -> float | None:
    """Paired median of full prefill's time to its whole answer (TTFT + decode_s) / label's, each its own answer.
    Below 1 the last token arrives later than with full prefill."""
    whole = lambda m: m["ttft_s"] + m["decode_s"]  # noqa: E731
    return paired_median(rows, label, "decode_s", lambda m, full: whole(full) / whole(m))


def main_configs(cfg: TasksConfig) -> dict[str, BlendConfig]:
    """Mode -> config of the main run (every mode but full at the base ratio)."""
    return {m: replace(cfg.base, mode=m) for m in cfg.modes if m != "full"}


def sweep_configs(cfg: TasksConfig) -> tuple[dict[str, BlendConfig], dict[str, str]]:
    """(the Pareto sweep's labels -> configs to run, sweep label -> main mode for the points the main run
    already measures): a point equal to a main config (a mode at the base ratio) is not prefilled twice."""
    main = main_configs(cfg)
    sweep = pareto_configs(list(cfg.modes), list(cfg.ratios), cfg.base) if cfg.ratios else {}
    same = {label: m for label, c in sweep.items() for m, mc in main.items() if c == mc}
    return {label: c for label, c in sweep.items() if label not in same}, same


def report(rows: list[dict], cfg: TasksConfig) -> dict:
    """{"modes": label -> figures at the base ratio, "pareto": rows per (mode, ratio) on the Pareto subset}."""
    out = {"modes": {m: summarize(rows, m) for m in cfg.modes}}
    sweep = [r for r in rows if r["pareto"]]
    if cfg.ratios and sweep:
        labels = {label for r in sweep for label in r["modes"]}
        table = {label: summarize(sweep, label) for label in labels}
        table.update({label: summarize(sweep, m) for label, m in sweep_configs(cfg)[1].items()})
        out["pareto"] = sweep_points(table, cfg)
        if sum(r["mode"] == DEFAULT_MODE for r in out["pareto"]) > 1:
            out["dominance"] = {"default": DEFAULT_MODE, "target": DOMINANCE,
                                "rows": dominance(out["pareto"], DEFAULT_MODE)}
    return out


def sweep_points(table: dict[str, dict], cfg: TasksConfig) -> list[dict]:
    """The JSON `pareto` rows: each mode at the ratios it was swept at and at the base ratio where it ran there
    too (a sweep at other ratios, or a mode joined from another run by --merge), by ratio."""
    rows = []
    base = cfg.base.recompute_ratio
    for m in cfg.modes:
        swept = [r for r in cfg.ratios if f"{m}@{r}" in table]
        own = pareto_rows(table, [m], swept, keys=KEYS)  # [] for a ratio mode swept at no ratio
        if m not in RATIO_FREE_MODES and base not in swept and m in table:
            own.append({"mode": m, "ratio": base, **{k: table[m][k] for k in KEYS}})
        rows += sorted(own, key=lambda r: r["ratio"])
    return rows


def report_with_settings(rows: list[dict], cfg: TasksConfig) -> dict:
    """report(rows), plus `settings`: the same per setting when the rows span more than one."""
    out = report(rows, cfg)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    if len(settings) > 1:
        out["settings"] = {s: report([r for r in rows if r["setting"] == s], cfg) for s in settings}
    return out


def full_gate(engine: ChunkCacheEngine, examples: list[TaskExample], kind: str, cfg: TasksConfig,
              log: Callable[[str], None]) -> dict[str, dict]:
    """Full prefill alone on every example: setting -> {full_score, n, included}."""
    scores: dict[str, list[float]] = {}
    for ex in examples:
        rows = evaluate_request(engine, list(ex.chunks), task_request(engine.prompts, ex), {}, cfg.max_new)
        scores.setdefault(ex.setting, []).append(task_scores(kind, rows["full"]["answer"], ex.answers)["task_score"])
    gate = {}
    for setting, s in scores.items():
        mean = statistics.fmean(s)
        gate[setting] = {"full_score": mean, "n": len(s), "included": mean >= cfg.min_full_score}
        log(f"[gate] {setting}: full prefill scores {mean:.3f} over {len(s)} -> "
            f"{'run' if gate[setting]['included'] else 'not run'} (threshold {cfg.min_full_score})")
    return gate


def run_tasks(engine: ChunkCacheEngine, suite: Suite, examples: list[TaskExample], cfg: TasksConfig,
              log: Callable[[str], None] = print) -> dict:
    """The `bench tasks` JSON (less its config): modes, pareto, per-setting figures, the gate, the rows."""
    out: dict = {"suite": suite.name}
    if suite.gated and cfg.min_full_score > 0:
        out["gate"] = full_gate(engine, examples, suite.score, cfg, log)
        examples = [ex for ex in examples if out["gate"][ex.setting]["included"]]
    main, sweep = main_configs(cfg), sweep_configs(cfg)[0]
    fusing = bool(set(cfg.modes) & set(FUSED_MODES))
    embedder = Embedder() if fusing else None
    rows, seen = [], {}
    for i, ex in enumerate(examples):
        k = seen[ex.setting] = seen.get(ex.setting, -1) + 1
        timed, in_sweep = k < cfg.timed, bool(sweep) and k < cfg.pareto_limit
        t0 = time.perf_counter()
        req, fused, ingest = task_request(engine.prompts, ex), None, {}
        if fusing:
            engine.precompute(list(ex.chunks))
            fused, ingest = fused_request(engine, req, embedder.encode(list(ex.chunks)), reuse=cfg.reuse_fused)
        modes = evaluate_request(engine, list(ex.chunks), req, {**main, **(sweep if in_sweep else {})}, cfg.max_new,
                                 repeats=cfg.repeats if timed else 1, fused=fused)
        rows.append({"id": ex.id, "setting": ex.setting, "timed": timed, "pareto": in_sweep, **ingest,
                     "wall_s": time.perf_counter() - t0, "modes": score_rows(modes, ex, suite.score)})
        log(f"[{i + 1}/{len(examples)}] {ex.id} {rows[-1]['wall_s']:.1f}s  " + "  ".join(
            f"{m}: score={modes[m]['task_score']:.2f} agree={modes[m]['agreement_f1']:.2f} kl={modes[m]['tf_kl']:.3f}"
            for m in cfg.modes))
    if rows:
        out.update(report_with_settings(rows, cfg))
    else:
        out["modes"] = {}
    out["examples"] = rows
    return out


# What shards of one run share (MERGE_KEYS), and runs of other modes on the same examples (COLUMN_KEYS).
# LATER_KEYS: absent from older results, which ran with these values.
LATER_KEYS = {"decode_correction": 0, "decode_correction_steps": 0, "correction_gate": 0.0, "linear_dtype": "float32",
              "decode_linear_dtype": "float32", "attention_bf16": False}
MERGE_KEYS = ("modes", "recompute_ratio", "ratios", "max_new", "model", "dtype", *LATER_KEYS)
COLUMN_KEYS = ("recompute_ratio", "max_new", "model", "dtype", *LATER_KEYS)


def config_value(config: dict, key: str) -> object:
    """config[key], or the value a run from before the key existed ran with (decode: as its linear_dtype)."""
    if key == "decode_linear_dtype" and key not in config:
        return config_value(config, "linear_dtype")
    return config.get(key, LATER_KEYS.get(key))


def merge_results(results: list[dict]) -> dict:
    """Runs of one suite and split as one result, every figure recomputed from the joined rows. Shards
    (`--skip`: disjoint examples, one configuration) are joined by rows; runs of other modes or ratios on the
    same examples in the same order are joined by columns (each mode's speedup stays paired with its own run's
    full prefill). ValueError naming what differs, or an example two shards both ran."""
    if not results:
        raise ValueError("--merge: no results given")
    first = results[0]
    ids = [[(row["setting"], row["id"]) for row in r["examples"]] for r in results]
    by_columns = len(results) > 1 and all(i == ids[0] for i in ids[1:])
    for i, r in enumerate(results[1:], 1):
        for key in ("suite", "split"):
            if r.get(key) != first.get(key):
                raise ValueError(f"--merge: result {i} has {key} {r.get(key)!r}, result 0 {first.get(key)!r}")
        for key in COLUMN_KEYS if by_columns else MERGE_KEYS:
            got, want = (config_value(x["config"], key) for x in (r, first))
            if got != want:
                raise ValueError(f"--merge: result {i} has config.{key} {got!r}, result 0 {want!r}")
    rows = join_columns(results) if by_columns else [row for r in results for row in r["examples"]]
    if not by_columns and len({k for i in ids for k in i}) != sum(map(len, ids)):
        raise ValueError("--merge: some examples are in more than one result (run the shards with --skip)")
    c = first["config"]
    modes = tuple(dict.fromkeys(m for r in results for m in r["config"]["modes"]))
    ratios = tuple(sorted({x for r in results for x in r["config"]["ratios"]}))
    cfg = TasksConfig(modes=modes, base=BlendConfig(recompute_ratio=c["recompute_ratio"]), ratios=ratios,
                      max_new=c["max_new"])
    out = {"suite": first["suite"], "split": first["split"], **report_with_settings(rows, cfg)}
    out["data"] = {"n": len(rows), "shards": [r["data"] for r in results]}
    out["config"] = {**c, "modes": list(modes), "ratios": list(ratios), "joined_by": "columns" if by_columns
                     else "rows", "merged_from": [r["config"] for r in results]}
    if any("gate" in r for r in results):
        out["gates"] = [r.get("gate") for r in results]
    out["examples"] = rows
    return out


def join_columns(results: list[dict]) -> list[dict]:
    """The rows of runs on the same examples, each row's modes joined. A label two runs share must have given
    the same answer (the fidelity figures are deterministic), and full prefill's answer must agree: otherwise
    the runs were not on the same token ids. The first run's measurement of a shared label is kept."""
    rows, new = [], False
    for k, row in enumerate(results[0]["examples"]):
        modes = dict(row["modes"])
        timed, pareto = row["timed"], row["pareto"]
        for i, r in enumerate(results[1:], 1):
            other = r["examples"][k]
            if other["timed"] != timed:
                raise ValueError(f"--merge: example {row['id']} is timed in one of results 0 and {i}, not the other "
                                 "(run them with the same --timed)")
            for label, figures in other["modes"].items():
                if label not in modes:
                    modes[label], new = figures, True
                elif figures["answer"] != modes[label]["answer"]:
                    raise ValueError(f"--merge: {label} answered example {row['id']} differently in result {i} "
                                     "than in result 0: not the same model, data or token ids")
            pareto = pareto or other["pareto"]
        rows.append({**row, "pareto": pareto, "modes": modes})
    if not new:
        raise ValueError("--merge: the results ran the same examples and no other mode (shards need --skip)")
    return rows


def plot(result: dict, path: str) -> None:
    """Task score, agreement with full prefill and KL against TTFT speedup, one line per mode (the Pareto rows, or
    one point per mode without --ratios)."""
    from chunkcache.bench.rag import plot_pareto

    points = result.get("pareto") or [{"mode": m, "ratio": f["recompute_fraction"], **f}
                                      for m, f in result["modes"].items()]
    points = [p for p in points if p["ttft_speedup_vs_full_median"] is not None]
    if not points:
        raise ValueError("--plot: no timed example (--timed 0), so no TTFT speedup to plot against")
    plot_pareto(points, path, panels=(("task_score", f"task score ({result['suite']})"),
                                      ("agreement_f1", "answer agreement with full prefill (token F1)"),
                                      ("tf_kl_mean", "teacher-forced KL vs full prefill (lower is better)")))
