"""Fused entries (FusionRAG's precompute, blend/fusion.py) with blend's selection (chunk heads + the question's
attention) against fusion's own (the question's attention only), on HotpotQA, beside blend, every variant
paired with full prefill on the same ids. Each example's 10 paragraphs are its corpus, as in `bench tasks`.

python benchmarks/explore_fusion_selection.py dev 30 10 benchmarks/fusion_selection_hotpotqa_dev30.json
(split, examples, timed examples with 3 repeats, JSON out)

The variant is patched in: a fusion config with epic_k = 17 (a field fusion never reads) takes blend's selector.
"""
import json
import sys
from pathlib import Path

from explore_score_layers import scratch_engine, summary

from chunkcache.bench.rag import evaluate_request, fused_request
from chunkcache.bench.tasks.runner import score_rows, task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend import modes
from chunkcache.blend.config import BlendConfig
from chunkcache.retrieval.embedder import Embedder

MARK = 17
CONFIGS = {"blend": BlendConfig(), "fusion": BlendConfig(mode="fusion"),
           "fusionblend": BlendConfig(mode="fusion", epic_k=MARK),
           "fusion@0.1": BlendConfig(mode="fusion", recompute_ratio=0.1),
           "fusionblend@0.1": BlendConfig(mode="fusion", epic_k=MARK, recompute_ratio=0.1),
           "blend@0.3": BlendConfig(recompute_ratio=0.3)}


def explore(configs: dict[str, BlendConfig], argv: list[str]) -> None:
    """Run `configs` on each example (argv: split, examples, timed examples with 3 repeats, JSON out, and
    optionally the suite, default hotpotqa) and write the per-example rows and their summary."""
    split, limit, timed, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    engine = scratch_engine()
    suite, embedder = get_suite(argv[4] if len(argv) > 4 else "hotpotqa"), Embedder()
    rows = []
    for i, ex in enumerate(load_suite(suite, split, limit)):
        req = task_request(engine.prompts, ex)
        engine.precompute(list(ex.chunks))
        fused, ingest = fused_request(engine, req, embedder.encode(list(ex.chunks)))
        res = evaluate_request(engine, list(ex.chunks), req, configs, suite.max_new,
                               repeats=3 if i < timed else 1, fused=fused)
        rows.append({"id": ex.id, "timed": i < timed, **ingest, "modes": score_rows(res, ex, suite.score)})
        last = rows[-1]["modes"]
        print(i, "  ".join(f"{k}: agree={last[k]['agreement_f1']:.2f} kl={last[k]['tf_kl']:.3f}" for k in configs),
              flush=True)
    result = {"suite": suite.name, "split": split, "summary": summary(rows), "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


def main() -> None:
    modes.SELECTORS["fusion"] = lambda c: modes._blend(c) if c.cfg.epic_k == MARK else modes._query(c)
    explore(CONFIGS, sys.argv[1:])


if __name__ == "__main__":
    main()
