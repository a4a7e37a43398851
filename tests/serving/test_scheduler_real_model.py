"""The scheduler on the real default model in fp32: batched greedy tokens equal each request run alone, except
where the unbatched top-2 logit margin is under 1e-4 (fp32 rounding of a different matmul shape may flip it)."""

import torch

from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.chunk_source import DictStore
from chunkcache.runner.decode import SamplingConfig
from chunkcache.runner.runner import ModelRunner
from chunkcache.serving import Scheduler, SchedulerConfig, SequenceRequest

PASSAGES = ["Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity.",
            "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
            "Warsaw is the capital and largest city of Poland, on the Vistula river.",
            "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean."]
QUESTIONS = ["Where was Marie Curie born?", "When was the Eiffel Tower completed?", "What river flows through Warsaw?",
             "Name a country on the Amazon.", "Who studied radioactivity?", "Which city has the Eiffel Tower?"]
MODES = ["full", "blend", "cacheblend", "prefix", "naive", "full"]
MARGIN = 1e-4


def _alone(engine, req, cfg, n):
    """Greedy tokens run alone, with the top-2 logit margin at each step."""
    res = engine.prefill(req, cfg, reserve=n)
    logits, out = res.logits, []
    for _ in range(n):
        top = logits.topk(2).values
        out.append((int(logits.argmax()), float(top[0] - top[1])))
        logits = engine.runner.decode_step(torch.tensor([out[-1][0]]), res.cache)
    return out


def test_batched_equals_alone_up_to_fp32_ties(smollm):
    engine = ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer, kernels="torch"), DictStore())
    n = 16
    reqs = [(engine.prompts.request([PASSAGES[(i + j) % 4] for j in range(1 + i % 3)], q), BlendConfig(mode=m))
            for i, (q, m) in enumerate(zip(QUESTIONS, MODES, strict=True))]
    alone = [_alone(engine, r, cfg, n) for r, cfg in reqs]
    sched = Scheduler(engine.runner, SchedulerConfig(max_batch=6, max_batch_tokens=32))
    try:
        handles = [sched.submit(SequenceRequest(
            lambda reserve, sl, r=r, cfg=cfg: engine.prefill_steps(r, cfg, reserve, sl), SamplingConfig(n), set(),
            r.num_tokens + n)) for r, cfg in reqs]
        batched = [h.result()["token_ids"] for h in handles]
    finally:
        sched.close()
    low = sum(margin < MARGIN for steps in alone for _, margin in steps)
    flips = 0
    for got, steps in zip(batched, alone, strict=True):
        want = [t for t, _ in steps]
        if got != want:
            first = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
            assert steps[first][1] < MARGIN, (first, steps[first])  # a mismatch only at a near-tie
            flips += 1
    print(f"\n{len(reqs)} requests x {n} tokens: {low} steps with top-2 margin < {MARGIN}, {flips} diverged")
