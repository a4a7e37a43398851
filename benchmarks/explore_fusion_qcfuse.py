"""Fused entries (FusionRAG's precompute, blend/fusion.py) with qcfuse's selection (the question over each
chunk's anchor tokens at 3 profiled critical layers) against fusion's own (the question's attention over every
layer), beside qcfuse on the plain entries, on HotpotQA; every variant paired with full prefill on the same ids.
Each example's 10 paragraphs are its corpus, as in `bench tasks`. The question: does qcfuse's cheaper selection
keep fusion's fidelity, so that at qcfuse's speed the default's loss is <= 0.7x qcfuse's?

python benchmarks/explore_fusion_qcfuse.py dev 30 10 benchmarks/fusion_qcfuse_hotpotqa_dev30.json [suite]
(split, examples, timed examples with 3 repeats, JSON out, suite: hotpotqa (default) or musique)

The variant is patched in: a fusion config with epic_k = 17 (a field fusion never reads) takes qcfuse's selector.
"""
import sys

from explore_fusion_selection import MARK, explore

from chunkcache.blend import modes
from chunkcache.blend.config import BlendConfig

CONFIGS = {"qcfuse": BlendConfig(mode="qcfuse"), "fusion": BlendConfig(mode="fusion"),
           "fusionqc": BlendConfig(mode="fusion", epic_k=MARK),
           "qcfuse@0.1": BlendConfig(mode="qcfuse", recompute_ratio=0.1),
           "fusion@0.1": BlendConfig(mode="fusion", recompute_ratio=0.1),
           "fusionqc@0.1": BlendConfig(mode="fusion", epic_k=MARK, recompute_ratio=0.1)}


def main() -> None:
    modes.SELECTORS["fusion"] = lambda c: modes._qcfuse(c) if c.cfg.epic_k == MARK else modes._query(c)
    explore(CONFIGS, sys.argv[1:])


if __name__ == "__main__":
    main()
