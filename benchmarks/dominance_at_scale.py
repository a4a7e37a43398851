"""Dominance at scale: fidelity from many untimed examples, TTFT speedups from a timed run on a subset.

`bench tasks` times only its first --timed examples; fidelity is deterministic, so it can be measured on many
more examples in untimed shards (--skip, --timed 0), also by runs of other modes on the same ids. This joins
per-example rows from any number of `bench tasks` JSONs by example id (checking that every run that holds a
label, full prefill included, gave the same answer on it: the same token ids), then:
  - curve: on the ids where every label is present, each label's agreement / KL, with the speedup of its
    (mode, ratio) in the timed run, as Pareto rows; `chunkcache.bench.dominance` reads the default's loss at
    each anchor's speedup off them;
  - equal: at the main ratio, the default against each anchor on every id both hold: mean agreement and KL,
    the paired difference with its 95% interval, and the loss ratios.

python benchmarks/dominance_at_scale.py --timed T.json [T2.json ...] --rows A.json B.json ... --json OUT.json
    [--plot OUT.png] [--default fusionqc] [--skip-labels fusionqc@0.3] (labels the untimed shards did not run)
Several timed runs (say, every anchor in one, the default's ratios in another, on the same timed examples): each
label's speedup comes from the first run that timed it, paired with that run's own full prefill.
"""
import argparse
import json
import statistics as st
from pathlib import Path

from chunkcache.bench.dominance import DOMINANCE, dominance
from chunkcache.bench.tasks.runner import plot
from chunkcache.blend.config import RATIO_FREE_MODES


def label_of(mode: str, ratio: float, held: set[str]) -> str:
    """The examples' label of a pareto row: `mode@ratio` where the run prefilled that point on its own, else the
    mode (a ratio-free mode, whose row's ratio is its recomputed share, or the point at the main ratio)."""
    label = f"{mode}@{ratio}"  # as bench/rag.pareto_configs names a sweep point
    return mode if mode in RATIO_FREE_MODES or label not in held else label


def join(paths: list[str]) -> dict[str, dict]:
    """id -> label -> figures, from every run's examples; ValueError when two runs answered one label differently."""
    rows: dict[str, dict] = {}
    for path in paths:
        for ex in json.loads(Path(path).read_text())["examples"]:
            held = rows.setdefault(ex["id"], {})
            for label, f in ex["modes"].items():
                if label in held and held[label]["answer"] != f["answer"]:
                    raise ValueError(f"{path}: {label} answered {ex['id']} differently than an earlier run")
                held.setdefault(label, f)
    return rows


def ratio(x: float | None) -> str:
    """A loss ratio for printing ('-' where undefined: the anchor lost nothing, or no point of the default's)."""
    return "-" if x is None else f"{x:.2f}x"


def mean(rows: list[dict], label: str, key: str) -> float:
    return st.fmean(r[label][key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timed", nargs="+", required=True)
    ap.add_argument("--rows", nargs="+", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--default", default="fusionqc")
    ap.add_argument("--skip-labels", default="", help="comma list of timed labels left out of the curve")
    ap.add_argument("--plot", help="PNG: the curve's rows (and full prefill) as `bench tasks --plot` draws them")
    a = ap.parse_args()
    timed = [json.loads(Path(t).read_text()) for t in a.timed]
    main_ratio = timed[0]["config"]["recompute_ratio"]
    if any(t["config"]["recompute_ratio"] != main_ratio for t in timed):
        raise SystemExit("--timed: the runs have different --recompute-ratio")
    speed: dict[str, tuple] = {}
    for t in timed:
        if "pareto" in t:
            held = {label for ex in t["examples"] for label in ex["modes"]}
            points = {label_of(p["mode"], p["ratio"], held):
                      (p["mode"], p["ratio"], p["ttft_speedup_vs_full_median"]) for p in t["pareto"]}
        else:  # a run without --ratios: its modes at the main ratio, labelled as its examples are
            points = {m: (m, round(f["recompute_fraction"], 3), f["ttft_speedup_vs_full_median"])
                      for m, f in t["modes"].items() if f["ttft_speedup_vs_full_median"] is not None}
        for label, point in points.items():
            speed.setdefault(label, point)
    rows = join(a.rows)
    left_out = set(filter(None, a.skip_labels.split(",")))
    labels = [lb for lb in speed if lb != "full" and lb not in left_out]
    common = [r for r in rows.values() if all(lb in r for lb in labels + ["full"])]
    pareto = [{"mode": speed[lb][0], "ratio": speed[lb][1], "ttft_speedup_vs_full_median": speed[lb][2],
               "agreement_f1": mean(common, lb, "agreement_f1"), "tf_kl_mean": mean(common, lb, "tf_kl"),
               "task_score": mean(common, lb, "task_score"), "n": len(common)} for lb in labels]
    curve = dominance(pareto, a.default)
    equal = []
    for lb in labels:
        if lb == a.default or "@" in lb:
            continue
        both = [r for r in rows.values() if lb in r and a.default in r]
        d = [r[a.default]["agreement_f1"] - r[lb]["agreement_f1"] for r in both]
        agree, kl = mean(both, lb, "agreement_f1"), mean(both, lb, "tf_kl")
        own, own_kl = mean(both, a.default, "agreement_f1"), mean(both, a.default, "tf_kl")
        equal.append({"mode": lb, "n": len(both), "agreement_f1": agree, "tf_kl_mean": kl,
                      "default_agreement_f1": own, "default_tf_kl_mean": own_kl,
                      "diff": st.fmean(d), "diff_ci95": 1.96 * st.stdev(d) / len(d) ** 0.5,
                      "disagreement_ratio": (1 - own) / (1 - agree) if agree < 1 else None,
                      "kl_ratio": own_kl / kl if kl > 0 else None})
    out = {"default": a.default, "target": DOMINANCE, "timed_from": a.timed, "rows_from": a.rows,
           "n_common": len(common), "pareto": pareto, "dominance": curve, "equal_ratio": equal}
    Path(a.json).write_text(json.dumps(out, indent=1))
    if a.plot:
        full = {"mode": "full", "ratio": 1.0, "ttft_speedup_vs_full_median": 1.0, "agreement_f1": 1.0,
                "tf_kl_mean": 0.0, "task_score": mean(common, "full", "task_score"), "n": len(common)}
        plot({"suite": timed[0]["suite"], "pareto": [full, *pareto]}, a.plot)
    print(f"curve on {len(common)} examples (every label present); speedups from {a.timed}")
    for p in sorted(pareto, key=lambda p: (p["mode"], p["ratio"])):
        print(f"  {p['mode']:>10} @{p['ratio']:<5g} {p['ttft_speedup_vs_full_median']:5.2f}x  "
              f"agree {p['agreement_f1']:.3f}  KL {p['tf_kl_mean']:.4f}  F1 {p['task_score']:.3f}")
    for r in curve:
        print(f"  vs {r['mode']:>10} at {r['ttft_speedup_vs_full_median']:.2f}x: "
              f"{ratio(r['disagreement_ratio'])} / {ratio(r['kl_ratio'])}  met={r['met']}")
    print(f"equal ratio {main_ratio}:")
    for e in equal:
        print(f"  vs {e['mode']:>10} n={e['n']}: {e['agreement_f1']:.3f}/{e['tf_kl_mean']:.4f} against "
              f"{e['default_agreement_f1']:.3f}/{e['default_tf_kl_mean']:.4f}"
              f"  diff {e['diff']:+.3f}+-{e['diff_ci95']:.3f}"
              f"  loss {ratio(e['disagreement_ratio'])} / KL {ratio(e['kl_ratio'])}")


if __name__ == "__main__":
    main()
