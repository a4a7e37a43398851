"""Where fusionqc's recomputed tokens sit, with and without chunk heads: the recompute's attention work is each
recomputed token's position (it attends to every token before it), so picks that sit late cost more at the
same count. Prints, per example, the mean position of the picks as a fraction of the prompt and the work
(sum of positions) with heads over without; the rules as in explore_fusionqc_heads.py (fqc_h0, fqc_h50).

cd benchmarks && python fusionqc_pick_positions.py musique dev 5
"""
import statistics as st
import sys

import explore_fusionqc_heads as heads
from explore_score_layers import scratch_engine

from chunkcache.bench.rag import fused_request
from chunkcache.bench.tasks.runner import task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend import blender, modes
from chunkcache.retrieval.embedder import Embedder


def main() -> None:
    suite, split, limit = get_suite(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    heads.patch()
    picks = {}

    def recording(c: modes.Candidates) -> modes.Selection:
        sel = modes.select(c)
        picks[c.cfg.epic_k] = ((c.placed + sel.keep).float(), c.ids.numel())
        return sel

    blender.select = recording
    engine, embedder, ratios = scratch_engine(), Embedder(), []
    for ex in load_suite(suite, split, limit):
        req = task_request(engine.prompts, ex)
        engine.precompute(list(ex.chunks))
        fused, _ = fused_request(engine, req, embedder.encode(list(ex.chunks)))
        for label in ("fqc_h0", "fqc_h50"):
            engine.prefill(fused, heads.CONFIGS[label])
        (p0, n), (p50, _) = picks[19], picks[17]
        ratios.append(float(p50.sum() / p0.sum()))
        print(f"{ex.id}: mean position h0 {float(p0.mean()) / n:.3f}, h50 {float(p50.mean()) / n:.3f} of {n} tokens; "
              f"work h50 / h0 {ratios[-1]:.3f}", flush=True)
    print(f"median work h50 / h0: {st.median(ratios):.3f}")


if __name__ == "__main__":
    main()
