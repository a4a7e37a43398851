"""FusionRAG's online rule against chunkcache's `fusion` anchor, on the same fused entries. The paper (arXiv
2601.12904, section 3.2) scores each placed token by the final layer's attention from the question, summed over
the question's tokens and heads, and recomputes one global top-k; `fusion` sums the same attention over every
layer (chunkcache's `query` rule). Both need the question's pass through every layer, so both cost the same;
only fidelity differs. Each example's 10 paragraphs are its corpus, as in `bench tasks`.

python benchmarks/explore_fusion_online_rule.py dev 30 0 benchmarks/fusion_online_rule_hotpotqa_dev30.json
(split, examples, timed examples with 3 repeats, JSON out)

The variant is patched in: a fusion config with epic_k = 17 (a field fusion never reads) takes the final-layer rule.
"""
import sys

from explore_fusion_selection import MARK, explore

from chunkcache.blend import modes
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.selection import top_tokens

CONFIGS = {"fusion": BlendConfig(mode="fusion"), "fusionfinal": BlendConfig(mode="fusion", epic_k=MARK),
           "fusion@0.1": BlendConfig(mode="fusion", recompute_ratio=0.1),
           "fusionfinal@0.1": BlendConfig(mode="fusion", epic_k=MARK, recompute_ratio=0.1)}


def final_layer(c: modes.Candidates) -> modes.Selection:
    """The paper's rule: the top budget candidates by the final layer's attention mass from the question."""
    return modes.Selection(keep=top_tokens(c.suffix_attention()[-1], c.budget))


def main() -> None:
    modes.SELECTORS["fusion"] = lambda c: final_layer(c) if c.cfg.epic_k == MARK else modes._query(c)
    explore(CONFIGS, sys.argv[1:])


if __name__ == "__main__":
    main()
