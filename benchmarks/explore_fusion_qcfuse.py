"""Fused entries (FusionRAG's precompute, blend/fusion.py) with qcfuse's selection (the question over each
chunk's anchor tokens at 3 profiled critical layers) against fusion's own (the question's attention over every
layer), beside qcfuse on the plain entries, on HotpotQA; every variant paired with full prefill on the same ids.
Each example's 10 paragraphs are its corpus, as in `bench tasks`. The question: does qcfuse's cheaper selection
keep fusion's fidelity, so that at qcfuse's speed the default's loss is <= 0.7x qcfuse's?

python benchmarks/explore_fusion_qcfuse.py dev 30 10 benchmarks/fusion_qcfuse_hotpotqa_dev30.json [suite [labels]]
(split, examples, timed examples with 3 repeats, JSON out, suite: hotpotqa (default) or musique, labels: a comma
list of the configs below to run, default all)

The variant is mode fusionqc, the package's rule when run: qcfuse's selection alone until 2026-12-05 (this script's
JSONs), since then with blend's chunk heads pinned (explore_fusionqc_heads.py). Until 2026-12-04 it was patched in:
a fusion config with epic_k = 17 took qcfuse's selector; the same computation, checked on HotpotQA test 0-1 in
BENCHMARKS.md.
"""
import sys

from explore_fusion_selection import explore

from chunkcache.blend.config import BlendConfig

SIX = (3, 5, 6, 8, 9, 10)  # the shipped profile's 6 best layers (3 is the default, TOP_CRITICAL)
CONFIGS = {"qcfuse": BlendConfig(mode="qcfuse"), "fusion": BlendConfig(mode="fusion"),
           "fusionqc": BlendConfig(mode="fusionqc"),
           "qcfuse@0.1": BlendConfig(mode="qcfuse", recompute_ratio=0.1),
           "fusion@0.1": BlendConfig(mode="fusion", recompute_ratio=0.1),
           "fusionqc@0.1": BlendConfig(mode="fusionqc", recompute_ratio=0.1),
           "fusionqc_l6": BlendConfig(mode="fusionqc", critical_layers=SIX),
           "fusionqc_a30": BlendConfig(mode="fusionqc", anchor_ratio=0.3),
           "fusionqc_a30@0.1": BlendConfig(mode="fusionqc", anchor_ratio=0.3, recompute_ratio=0.1),
           "fusionqc_l6_a30": BlendConfig(mode="fusionqc", critical_layers=SIX, anchor_ratio=0.3)}


def main() -> None:
    labels = sys.argv[6].split(",") if len(sys.argv) > 6 else list(CONFIGS)
    explore({k: CONFIGS[k] for k in labels}, sys.argv[1:6])


if __name__ == "__main__":
    main()
