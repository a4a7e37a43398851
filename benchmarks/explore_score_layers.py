"""Whether blend's selection pass can stop early: the suffix's attention summed over `score_layers` only
(BlendConfig.score_layers; the pass stops after the last of them and the deeper layers load under the
recompute) against every layer, on HotpotQA dev, every variant paired with full prefill on the same ids.

python benchmarks/explore_score_layers.py dev 30 10 benchmarks/score_layers_hotpotqa_dev30.json \
    '{"all": {}, "d10": {"score_layers": [0,1,2,3,4,5,6,7,8,9]}, "crit": {"score_layers": [6,8,9]}, ...}'
(split, examples, timed examples with 3 repeats, JSON out, label -> BlendConfig fields; mode blend unless given)
"""
import json
import statistics
import sys
from pathlib import Path

from chunkcache.bench.rag import evaluate_request
from chunkcache.bench.tasks.runner import score_rows, task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config.settings import EngineConfig


def scratch_engine(**fields) -> ChunkCacheEngine:
    """The default model over an in-memory store (LRU within its budget): an exploration writes nothing to disk,
    where a temp cache dir per run would keep gigabytes of KV after it."""
    return ChunkCacheEngine.from_config(EngineConfig(store="memory", **fields))


def summary(rows: list[dict]) -> dict:
    """Per label: mean agreement F1 and KL, median paired speedup over the timed rows and over all rows, and
    the median paired TTFT ratio against the first label (speedup_timed_median None when no row was timed)."""
    labels = [k for k in rows[0]["modes"] if k != "full"]
    base, timed = labels[0], [r for r in rows if r["timed"]]
    return {k: {"agreement_f1": statistics.fmean(r["modes"][k]["agreement_f1"] for r in rows),
                "tf_kl_mean": statistics.fmean(r["modes"][k]["tf_kl"] for r in rows),
                "speedup_timed_median": statistics.median(r["modes"][k]["speedup"] for r in timed) if timed else None,
                "speedup_all_median": statistics.median(r["modes"][k]["speedup"] for r in rows),
                f"speedup_vs_{base}_median": statistics.median(r["modes"][k]["speedup"] / r["modes"][base]["speedup"]
                                                              for r in rows), "n": len(rows)} for k in labels}


def main() -> None:
    split, limit, timed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    variants = json.loads(sys.argv[5])
    engine = scratch_engine()
    suite = get_suite("hotpotqa")
    configs = {k: BlendConfig(**{"mode": "blend", **{a: tuple(b) if isinstance(b, list) else b for a, b in v.items()}})
               for k, v in variants.items()}
    rows = []
    for i, ex in enumerate(load_suite(suite, split, limit)):
        res = evaluate_request(engine, list(ex.chunks), task_request(engine.prompts, ex), configs, suite.max_new,
                               repeats=3 if i < timed else 1)
        rows.append({"id": ex.id, "timed": i < timed, "modes": score_rows(res, ex, suite.score)})
        last = rows[-1]["modes"]
        print(i, "  ".join(f"{k}: agree={last[k]['agreement_f1']:.2f} kl={last[k]['tf_kl']:.3f}" for k in configs),
              flush=True)
    result = {"split": split, "variants": variants, "summary": summary(rows), "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
