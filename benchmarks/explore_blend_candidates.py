"""How the 2026-12-01 `blend` rule was chosen: candidate selectors fixed before layer 0 (no layer over every
context token), patched into `bench rag` beside cacheblend, the previous blend and epic.

  qsink  the first sink_tokens (4) of every chunk, the rest by the question's attention (summed over layers)
  psink  the same with ProphetKV's layer-fused score
  esink  half the budget as chunk heads (k = budget / 2 / chunks), the rest by the question's attention

python benchmarks/explore_blend_candidates.py 0.1,0.15 cacheblend,blend,epic,qsink,psink,esink 6 \
    benchmarks/blend_candidates.json      (dev examples 0-5, 2 threads; esink became `blend`)

The JSON was written before the change, so its `blend` is the previous rule (the first 4 tokens of every
chunk pinned, the rest by deviation x the question's attention at layer 1); on today's code `blend` is esink.
"""
import json
import sys

import chunkcache.blend.config as bc
import chunkcache.blend.modes as md
from chunkcache.blend.selection import top_tokens
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.bench import rag
import importlib.resources as ir

def fill(c, score, fixed):
    score = score.clone()
    score[fixed] = float("inf")
    return md.Selection(keep=top_tokens(score, max(c.budget, fixed.numel())))

def qsink(c):
    return fill(c, c.suffix_attention().sum(0), c.heads(c.cfg.sink_tokens))
def psink(c):
    mass = c.suffix_attention()
    return fill(c, (mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)).amax(0), c.heads(c.cfg.sink_tokens))
def esink(c):  # half the budget as chunk heads, the rest by query attention
    k = max(1, round(c.budget / 2 / max(1, len(c.chunk_spans()))))
    return fill(c, c.suffix_attention().sum(0), c.heads(k))
new = {"qsink": qsink, "psink": psink, "esink": esink}
bc.MODES = bc.MODES + tuple(new)
md.SELECTORS.update(new)
ratios = [float(x) for x in sys.argv[1].split(",")]
modes = sys.argv[2].split(",")
lim, out = int(sys.argv[3]), sys.argv[4]
eng = ChunkCacheEngine.from_config(EngineConfig(threads=2, store="memory"))
data = json.loads((ir.files("chunkcache")/"data"/"musique_dev.json").read_text())
data = data if isinstance(data, list) else data["examples"]
res = rag.run_rag(eng, data[:lim], ["full"] + modes, BlendConfig(), max_new=16, ratios=ratios)
json.dump(res, open(out, "w"), indent=1)
for r in res["pareto"]:
    print(f"{r['mode']:>10} {r['ratio']:.2f} {r['ttft_speedup_vs_full_median']:6.2f}x "
          f"top1 {r['tf_top1_agreement']:.3f} kl {r['tf_kl_mean']:.4f} fidF1 {r['fidelity_f1_mean']:.3f}")
