"""How sure is a blended answer where it goes wrong? The top next-token probability at each of the first decode steps
of fusionqc 0.05 + decode correction K = 1024 on RULER's single needle at 4K, beside whether full prefill and the
blend find the needle: the data a correction gate (BlendConfig.correction_gate) is chosen from.

Each example's fused entries are read where the store holds them (--reuse-fused's rule), else computed. The steps
run ungated (the correction as the README's moonshot configuration runs it); step 0 is the prefill's own logits.
Full prefill's answers are read from a `bench tasks` result on the same split (its instances are the same).

python benchmarks/niah_answer_confidence.py dev 50 benchmarks/gate_niah_single4k_full_dev100.json out.json
"""
import json
import sys

import torch

from chunkcache.bench.rag import fused_request
from chunkcache.bench.tasks.metrics import needle_recall
from chunkcache.bench.tasks.runner import task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.retrieval.embedder import Embedder
from chunkcache.runner.decode import next_logits

STEPS = 10
CONFIG = BlendConfig(mode="fusionqc", recompute_ratio=0.05, decode_correction=1024)


def greedy_steps(engine: ChunkCacheEngine, req, cfg: BlendConfig) -> tuple[str, list[float]]:
    """The greedy answer's text over STEPS steps and each step's top probability."""
    res = engine.prefill(req, cfg, reserve=STEPS + 1)
    logits, ids, probs = res.logits, [], []
    for _ in range(STEPS):
        probs.append(float(logits.float().softmax(-1).max()))
        ids.append(int(logits.argmax()))
        if ids[-1] in engine.eos_ids:
            break
        token = torch.tensor(ids[-1:], dtype=torch.int64, device=engine.runner.device)
        logits = next_logits(engine.runner, token, res.cache, res.correction)
    return engine.tokenizer.decode([t for t in ids if t not in engine.eos_ids], skip_special_tokens=True), probs


def main(split: str, limit: int, full_result: str, out: str) -> None:
    full = {e["id"]: e["modes"]["full"] for e in json.load(open(full_result))["examples"]}
    engine, embedder = ChunkCacheEngine.from_config(EngineConfig()), Embedder()
    p = engine.prompts
    reserve = len(p.prefix_ids) + len(p.encode(p.template.suffix_text)) + get_suite("niah").max_new + 8  # as the CLI
    examples = load_suite(get_suite("niah"), split, limit, count=lambda t: len(p.encode(t)), reserve=reserve,
                          lengths=(4096,), variants=("single",))
    rows = []
    for ex in examples:
        req = task_request(p, ex)
        fused, _ = fused_request(engine, req, embedder.encode(list(ex.chunks)), reuse=True)
        text, probs = greedy_steps(engine, fused, CONFIG)
        rows.append({"id": ex.id, "needle_chunk": ex.gold_chunks[0], "full_answer": full[ex.id]["answer"],
                     "full_recall": full[ex.id]["task_score"], "answer": text.strip(),
                     "recall": needle_recall(text, ex.answers), "top_prob": probs})
        print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as f:
        json.dump({"split": split, "limit": limit, "config": {"mode": CONFIG.mode, "recompute_ratio": 0.05,
                                                              "decode_correction": 1024, "steps": STEPS},
                   "examples": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
