"""One mode's figures in two `bench tasks` runs on the same examples, paired by example id: agreement with full
prefill (mean, paired difference with a 95% interval, examples better / worse) and teacher-forced KL. Both runs must
have the same full-prefill answers (same examples, same model and dtype), which is checked.

python benchmarks/paired_runs.py A.json B.json [--label-a fusionqc] [--label-b fusionqc]
(B is the one compared against A: the difference is B - A.)
"""
import argparse
import functools
import json
import statistics as st
from pathlib import Path

from agreement_across_runs import by_id, rows, shared_ids  # this folder's sibling script


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--label-a", default="fusionqc")
    ap.add_argument("--label-b", default="fusionqc")
    args = ap.parse_args()
    run_b = json.loads(Path(args.b).read_text())
    ex_b = by_id(run_b)
    a, b = rows(args.a), {i: ex["modes"] for i, ex in ex_b.items()}
    try:
        ids = shared_ids(a, b, args.label_a, args.label_b)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    for i in ids:
        if a[i]["full"]["answer"] != b[i]["full"]["answer"]:
            raise SystemExit(f"{i}: full prefill answered differently in the two runs")
    pa, pb = [a[i][args.label_a] for i in ids], [b[i][args.label_b] for i in ids]
    diff = [y["agreement_f1"] - x["agreement_f1"] for x, y in zip(pa, pb, strict=True)]
    half = 1.96 * st.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    mean = lambda p, k: st.fmean(r[k] for r in p)  # noqa: E731
    print(f"n={len(ids)}  agreement F1 A {mean(pa, 'agreement_f1'):.3f}  B {mean(pb, 'agreement_f1'):.3f}  "
          f"B-A {st.fmean(diff):+.3f} +- {half:.3f}  (B better on {sum(d > 0 for d in diff)}, worse on "
          f"{sum(d < 0 for d in diff)})")
    print(f"exact A {mean(pa, 'agreement_exact'):.3f}  B {mean(pb, 'agreement_exact'):.3f}  "
          f"KL A {mean(pa, 'tf_kl'):.4f}  B {mean(pb, 'tf_kl'):.4f}  "
          f"task score A {mean(pa, 'task_score'):.4f}  B {mean(pb, 'task_score'):.4f}  "
          f"full {st.fmean(a[i]['full']['task_score'] for i in ids):.4f}")
    timed = [i for i in ids if ex_b[i].get("timed") and "tpot_s" in b[i][args.label_b] and "tpot_s" in b[i]["full"]]
    if timed:  # B's own timed examples: each run's time to its whole answer, prefill + its decode steps
        ratio = st.median(answer_s(b[i]["full"], run_b) / answer_s(b[i][args.label_b], run_b) for i in timed)
        tpot = st.median(b[i][args.label_b]["tpot_s"] / b[i]["full"]["tpot_s"] for i in timed)
        ttft = st.median(b[i][args.label_b]["speedup"] for i in timed)
        counted = "" if all("decode_s" in b[i]["full"] for i in timed) else " (steps re-counted from the answer text)"
        print(f"B on its {len(timed)} timed examples: TTFT speedup {ttft:.2f}x, decode step {tpot:.2f}x full's time "
              f"(mean over each answer), the whole answer at {ratio:.2f}x full prefill's speed{counted}")


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    from chunkcache.runner.loader import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)


def answer_s(m: dict, run: dict) -> float:
    """Time to the whole answer: TTFT + decode_s; rows from before decode_s re-count the decode steps (generated
    ids - 1) from the answer text, approximate by a token."""
    if "decode_s" in m:
        return m["ttft_s"] + m["decode_s"]
    ids = min(run.get("config", {}).get("max_new", 32), len(tokenizer()(m["answer"])["input_ids"]) + 1)  # + EOS
    return m["ttft_s"] + m["tpot_s"] * (ids - 1)


if __name__ == "__main__":
    main()
