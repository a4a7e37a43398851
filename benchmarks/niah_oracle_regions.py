"""Which recomputed region mends a needle that blending loses? An oracle diagnosis, not a mode.

For each example, the same prompt is answered by full prefill, naive (every chunk placed, only the suffix computed)
and by naive plus an exact recompute of whole chunks chosen by where the needle is (chunk 0 is always exact: it is
placed behind the system prefix it was computed behind). Recomputed chunks are run through every layer over the
cache in position order, so a region that starts right after chunk 0 is exactly full prefill's. Regions:
  needle        the needle's chunk only;
  upto_needle   chunks 1 .. the needle's (exact up to and including the needle);
  after_needle  every chunk after the needle's;
  all_but_needle every chunk but the needle's.
The selection is forced by replacing `blender.select` in this process. Greedy answers, no decode correction.

python benchmarks/niah_oracle_regions.py benchmarks/niah_single4k_test_missed7_data.json out.json
"""
import json
import sys

import torch
from explore_score_layers import scratch_engine

from chunkcache.bench.tasks.example import load_examples
from chunkcache.bench.tasks.metrics import needle_recall
from chunkcache.bench.tasks.runner import task_request
from chunkcache.blend import blender, modes
from chunkcache.blend.config import BlendConfig
from chunkcache.runner.decode import SamplingConfig

SAMPLING = SamplingConfig(max_new_tokens=12)
FORCED = BlendConfig(mode="query", recompute_ratio=0.9)  # the ratio only keeps select() off its every-token path


def regions(n_chunks: int, needle: int) -> dict[str, list[int]]:
    later = range(1, n_chunks)
    return {"needle": [needle], "upto_needle": [i for i in later if i <= needle],
            "after_needle": [i for i in later if i > needle], "all_but_needle": [i for i in later if i != needle]}


def main(data: str, out: str) -> None:
    engine, forced = scratch_engine(), {}

    def oracle(c: modes.Candidates) -> modes.Selection:
        if c.placed != forced["first"]:
            raise RuntimeError(f"chunk 0 was not placed exactly: candidates start at {c.placed}")
        return modes.Selection(keep=forced["keep"].to(c.runner.device))

    blender.select = oracle
    rows = []
    for ex in load_examples(data):
        req = task_request(engine.prompts, ex)
        first = forced["first"] = req.chunk_offsets[1]  # candidates start after chunk 0 (placed with the prefix)
        spans = [(o - first, o - first + len(c)) for o, c in zip(req.chunk_offsets, req.chunks, strict=True)]
        needle = ex.gold_chunks[0]

        def answer(cfg: BlendConfig) -> dict:
            text = engine.generate(req, cfg, SAMPLING).text
            return {"answer": text.strip(), "recall": needle_recall(text, ex.answers)}

        row = {"id": ex.id, "needle_chunk": needle, "chunks": len(req.chunks),
               "full": answer(BlendConfig(mode="full")), "naive": answer(BlendConfig(mode="naive"))}
        for name, idx in regions(len(req.chunks), needle).items():
            forced["keep"] = torch.cat([torch.zeros(0, dtype=torch.int64), *(torch.arange(*spans[i]) for i in idx)])
            row[name] = answer(FORCED)
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = ["full", "naive", *regions(2, 1)]
    summary = {k: sum(r[k]["recall"] for r in rows) for k in names}
    print("needles found of", len(rows), summary)
    with open(out, "w") as f:
        json.dump({"data": data, "sampling": {"max_new_tokens": SAMPLING.max_new_tokens}, "found": summary,
                   "examples": rows}, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
