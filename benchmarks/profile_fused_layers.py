"""qcfuse's critical layers profiled over fused entries against plain ones, on HotpotQA dev 0-7 (the shipped
profile's sample): does fusionqc need a profile of its own?

python benchmarks/profile_fused_layers.py benchmarks/qcfuse_profile_fused_vs_plain_hotpotqa_dev8.json
"""
import json
import sys

from explore_score_layers import scratch_engine
from chunkcache.bench.rag import fused_request
from chunkcache.bench.tasks.runner import task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.qcfuse_profile import profile_critical_layers
from chunkcache.retrieval.embedder import Embedder

engine = scratch_engine(threads=2)
suite, emb = get_suite("hotpotqa"), Embedder()
plain, fused = [], []
for ex in load_suite(suite, "dev", 8):
    req = task_request(engine.prompts, ex)
    plain.append(req)
    fused.append(fused_request(engine, req, emb.encode(list(ex.chunks)))[0])
out = {}
for name, reqs in (("plain", plain), ("fused", fused)):
    p = profile_critical_layers(engine.runner, reqs)
    out[name] = {"critical": p.critical, "ranked": p.ranked[:8], "recall": [round(x, 3) for x in p.recall]}
    print(name, p.critical, p.ranked[:8], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
