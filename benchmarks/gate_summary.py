"""Full prefill's recall per `bench tasks` result (the RULER gate): mean, a 95% bootstrap interval (2,000 resamples
of the instances, seed 0), and how many instances found every needle and none.

python benchmarks/gate_summary.py benchmarks/gate_*_full_dev*.json
"""
import json
import random
import statistics as st
import sys


def main(paths: list[str]) -> None:
    print("| result | n | full recall | 95% bootstrap | every needle | none |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in paths:
        scores = [e["modes"]["full"]["task_score"] for e in json.load(open(path))["examples"]]
        rng = random.Random(0)
        boots = sorted(st.fmean(rng.choices(scores, k=len(scores))) for _ in range(2000))
        print(f"| {path} | {len(scores)} | {st.fmean(scores):.3f} | [{boots[50]:.2f}, {boots[1949]:.2f}] | "
              f"{sum(s == 1 for s in scores)} | {sum(s == 0 for s in scores)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
