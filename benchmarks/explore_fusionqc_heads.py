"""fusionqc's selection with chunk heads pinned (a share of the budget on the first tokens of every chunk, the rest
by qcfuse's view importance) against qcfuse's selection alone (fqc_h0: fusionqc until 2026-12-05), on the same
fused entries. This run made blend's share (fqc_h50) fusionqc's rule. blend led the old rule only through its
chunk heads; the question was whether they add fidelity over fused entries at 6K tokens (MuSiQue), where
HotpotQA (1.5K) showed no gain for fusion's selection with heads (fusion_selection_hotpotqa_dev30.json).
Pinning heads changes which tokens are recomputed, not how many nor the selection's cost; the recompute's
cost moves with where those tokens sit (the question's picks sit late, so heads are cheaper: timed in
fusionqc_heads_musique_dev5_timed.json, positions from fusionqc_pick_positions.py). Each example's 10 paragraphs
are its corpus, as in `bench tasks`.

cd benchmarks && python explore_fusionqc_heads.py dev 20 0 fusionqc_heads_musique_dev20.json musique
(split, examples, timed examples with 3 repeats, JSON out, suite: hotpotqa (default) or musique, labels: a comma
list of the configs below to run, default all)

The variants are patched in: a fusionqc config whose epic_k (a field fusionqc never reads) is a key of SHARES
pins that share of the budget as chunk heads (0: none, qcfuse's selection alone).
"""
import sys

from explore_fusion_selection import explore

from chunkcache.blend import modes
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.selection import top_tokens

SHARES = {17: 0.5, 18: 0.25, 19: 0.0}  # epic_k mark -> share of the budget spent on chunk heads (0.5 is blend's)
CONFIGS = {"fqc_h0": BlendConfig(mode="fusionqc", epic_k=19),
           "fqc_h50": BlendConfig(mode="fusionqc", epic_k=17),
           "fqc_h25": BlendConfig(mode="fusionqc", epic_k=18),
           "fqc_h0@0.1": BlendConfig(mode="fusionqc", epic_k=19, recompute_ratio=0.1),
           "fqc_h25@0.1": BlendConfig(mode="fusionqc", epic_k=18, recompute_ratio=0.1)}


def with_heads(c: modes.Candidates) -> modes.Selection:
    """qcfuse's selection with the first k tokens of every chunk kept first, k = SHARES[epic_k] of the budget
    spread over the chunks (as blend_heads), the rest of the budget by view importance."""
    score = modes.qcfuse_importance(c)  # [n_cand]
    if not SHARES[c.cfg.epic_k]:
        return modes.Selection(keep=top_tokens(score, c.budget))
    k = max(1, round(c.budget * SHARES[c.cfg.epic_k] / max(1, len(c.chunk_spans()))))
    score[c.heads(k)] = float("inf")
    return modes.Selection(keep=top_tokens(score, c.budget))


def patch() -> None:
    """fusionqc configs marked in SHARES take with_heads; the rest the package's rule."""
    modes.SELECTORS["fusionqc"] = lambda c: with_heads(c) if c.cfg.epic_k in SHARES else modes._fusionqc(c)


def main() -> None:
    patch()
    labels = sys.argv[6].split(",") if len(sys.argv) > 6 else list(CONFIGS)
    explore({k: CONFIGS[k] for k in labels}, sys.argv[1:6])


if __name__ == "__main__":
    main()
