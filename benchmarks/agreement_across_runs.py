"""Answer agreement between two `bench tasks` runs on the same examples: how far a change outside the blend (a
dtype, a kernel, a machine) moves full prefill's own greedy answers, on the scale `agreement_f1` uses.

`bench tasks` measures each mode against full prefill in the same run. A precision change cannot be measured that
way (one runner, one dtype), so this joins two runs by example id and scores run B's answers of a label against
run A's answers of a label with the suite metric (`chunkcache.bench.tasks.metrics.agreement`: normalised token
F1, exact match). Both runs must have seen the same prompts: the example ids and full prefill's prompt lengths
must match.

python benchmarks/agreement_across_runs.py A.json B.json [--label-a full] [--label-b full] [--json OUT.json]
"""
import argparse
import json
import statistics as st
from pathlib import Path

from chunkcache.bench.tasks.metrics import agreement


def by_id(run: dict) -> dict[str, dict]:
    """A run's examples by id: `bench tasks` JSON ("examples") or a benchmarks/explore_* one ("rows")."""
    return {ex["id"]: ex for ex in run.get("examples", run.get("rows", []))}


def rows(path: str) -> dict[str, dict]:
    return {i: ex["modes"] for i, ex in by_id(json.loads(Path(path).read_text())).items()}


def shared_ids(a: dict[str, dict], b: dict[str, dict], label_a: str, label_b: str) -> list[str]:
    """The example ids of a (id -> modes) that b holds too, with label_a in a's and label_b in b's."""
    ids = [i for i in a if i in b and label_a in a[i] and label_b in b[i]]
    if not ids:
        raise ValueError("the two runs share no example holding both labels")
    return ids


def compare(a: dict[str, dict], b: dict[str, dict], label_a: str, label_b: str) -> dict:
    ids = shared_ids(a, b, label_a, label_b)
    for i in ids:
        if a[i]["full"]["prompt_tokens"] != b[i]["full"]["prompt_tokens"]:
            raise ValueError(f"{i}: the runs saw different prompts ({a[i]['full']['prompt_tokens']} against "
                             f"{b[i]['full']['prompt_tokens']} tokens)")
    per = {i: agreement(b[i][label_b]["answer"], a[i][label_a]["answer"]) for i in ids}
    return {"label_a": label_a, "label_b": label_b, "n": len(ids),
            "agreement_f1": st.fmean(p["agreement_f1"] for p in per.values()),
            "agreement_exact": st.fmean(p["agreement_exact"] for p in per.values()),
            "differ": sorted(i for i, p in per.items() if p["agreement_exact"] < 1.0), "per_example": per}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--label-a", default="full")
    ap.add_argument("--label-b", default="full")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {"a": args.a, "b": args.b, **compare(rows(args.a), rows(args.b), args.label_a, args.label_b)}
    print(f"{args.label_b} of {args.b} against {args.label_a} of {args.a}: n={out['n']} agreement F1 "
          f"{out['agreement_f1']:.3f}, exact {out['agreement_exact']:.3f}, {len(out['differ'])} answers differ")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
