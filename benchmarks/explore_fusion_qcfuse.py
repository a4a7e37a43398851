"""Fused entries (FusionRAG's precompute, blend/fusion.py) with qcfuse's selection (the question over each
chunk's anchor tokens at 3 profiled critical layers) against fusion's own (the question's attention over every
layer), beside qcfuse on the plain entries, on HotpotQA; every variant paired with full prefill on the same ids.
Each example's 10 paragraphs are its corpus, as in `bench tasks`. The question: does qcfuse's cheaper selection
keep fusion's fidelity, so that at qcfuse's speed the default's loss is <= 0.7x qcfuse's?

python benchmarks/explore_fusion_qcfuse.py dev 30 10 benchmarks/fusion_qcfuse_hotpotqa_dev30.json [suite]
(split, examples, timed examples with 3 repeats, JSON out, suite: hotpotqa (default) or musique)

The variant is patched in: a fusion config with epic_k = 17 (a field fusion never reads) takes qcfuse's selector.
"""
import json
import sys
import tempfile
from pathlib import Path

from explore_score_layers import summary

from chunkcache.bench.rag import evaluate_request, fused_request
from chunkcache.bench.tasks.runner import score_rows, task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend import modes
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config.settings import EngineConfig
from chunkcache.retrieval.embedder import Embedder

MARK = 17
CONFIGS = {"qcfuse": BlendConfig(mode="qcfuse"), "fusion": BlendConfig(mode="fusion"),
           "fusionqc": BlendConfig(mode="fusion", epic_k=MARK),
           "qcfuse@0.1": BlendConfig(mode="qcfuse", recompute_ratio=0.1),
           "fusion@0.1": BlendConfig(mode="fusion", recompute_ratio=0.1),
           "fusionqc@0.1": BlendConfig(mode="fusion", epic_k=MARK, recompute_ratio=0.1)}


def main() -> None:
    modes.SELECTORS["fusion"] = lambda c: modes._qcfuse(c) if c.cfg.epic_k == MARK else modes._query(c)
    split, limit, timed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    engine = ChunkCacheEngine.from_config(EngineConfig(cache_dir=tempfile.mkdtemp()))
    suite, embedder = get_suite(sys.argv[5] if len(sys.argv) > 5 else "hotpotqa"), Embedder()
    rows = []
    for i, ex in enumerate(load_suite(suite, split, limit)):
        req = task_request(engine.prompts, ex)
        engine.precompute(list(ex.chunks))
        fused, _ = fused_request(engine, req, embedder.encode(list(ex.chunks)))
        res = evaluate_request(engine, list(ex.chunks), req, CONFIGS, suite.max_new,
                               repeats=3 if i < timed else 1, fused=fused)
        rows.append({"id": ex.id, "timed": i < timed, "modes": score_rows(res, ex, suite.score)})
        print(i, "  ".join(f"{k}: agree={rows[-1]['modes'][k]['agreement_f1']:.2f} kl={rows[-1]['modes'][k]['tf_kl']:.3f}"
                           for k in CONFIGS), flush=True)
    result = {"suite": suite.name, "split": split, "summary": summary(rows), "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
