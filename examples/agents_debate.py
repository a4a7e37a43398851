"""A debate between agents on chunkcache's AgentRuntime, in plain Python (no agent framework).

Two debaters argue for and against a claim over a shared passage for a few rounds, each reading the
passage, the claim, its own last argument and its opponent's; a judge then reads the final arguments.
Every turn is one `AgentRuntime.turn` on the engine's single prefill path: the passage is computed once
and is a chunk hit for every later reader, each argument is read back as the KV its author computed, and
with `kvcomm` modes the anchor pool estimates how that KV shifts behind each reader's prompt.

    python examples/agents_debate.py --mode kvcomm+epic --rounds 3
"""

from __future__ import annotations

import argparse

from chunkcache.agents.runtime import AgentRuntime, Turn
from chunkcache.agents.template import AgentTemplate, Message
from chunkcache.blend.config import BlendConfig
from chunkcache.runner.decode import SamplingConfig

PASSAGE = ("The Eiffel Tower was built for the 1889 World's Fair in Paris. Many artists of the time called it "
           "ugly and asked for it to be torn down after twenty years; it was kept because it served as a radio "
           "antenna. Today it is the most visited paid monument in the world.")
CLAIM = "The Eiffel Tower should have been torn down in 1909."
SIDES = {"pro": "You argue FOR the claim. Be brief and persuasive.",
         "con": "You argue AGAINST the claim. Be brief and persuasive."}
OPENING = "Passage:\n{passage}\n\nClaim: {claim}\n\nGive your opening argument in one sentence."
REBUTTAL = ("Passage:\n{passage}\n\nClaim: {claim}\n\nYour last argument: {own}\n\nYour opponent said: {opponent}\n\n"
            "Answer your opponent in one sentence.")
JUDGE = ("Passage:\n{passage}\n\nClaim: {claim}\n\nFor: {pro}\n\nAgainst: {con}\n\n"
         "Which side argued better? Answer 'for' or 'against' and why, in one sentence.")


def run_debate(rt: AgentRuntime, rounds: int = 3, cfg: BlendConfig = BlendConfig.named("kvcomm+blend"),
               max_new: int = 24, passage: str = PASSAGE, claim: str = CLAIM) -> list[Turn]:
    """Opening arguments, then rounds-1 rebuttal rounds, then the judge. Returns every turn in order."""
    sampling = SamplingConfig(max_new_tokens=max_new)
    turns: list[Turn] = []
    last: dict[str, Message] = {}
    for r in range(1, rounds + 1):
        said = {}
        for side, role in SIDES.items():
            values: dict = {"passage": passage, "claim": claim}
            if r == 1:
                tpl = AgentTemplate(f"debate-open:{side}", role, OPENING)
            else:
                tpl = AgentTemplate(f"debate-rebut:{side}", role, REBUTTAL)
                other = "con" if side == "pro" else "pro"
                values.update(own=last[side], opponent=last[other])
            t = rt.turn(tpl, values, cfg, sampling, author=side)
            t.round = r
            said[side] = t.message
            turns.append(t)
        last = said
    judge = AgentTemplate("debate-judge", "You are an impartial judge of debates.", JUDGE)
    t = rt.turn(judge, {"passage": passage, "claim": claim, "pro": last["pro"], "con": last["con"]}, cfg, sampling,
                author="judge")
    t.round = rounds + 1
    turns.append(t)
    return turns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="kvcomm+epic", help="a BlendConfig.named mode: full, blend, kvcomm, ...")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    from chunkcache.config import EngineConfig

    rt = AgentRuntime.from_config(EngineConfig(store="memory"))
    for t in run_debate(rt, args.rounds, BlendConfig.named(args.mode), args.max_new_tokens):
        s = t.stats
        print(f"[round {t.round}] {t.agent:5s} reused {s.reused_tokens:4d}/{s.prompt_tokens:<4d} "
              f"ttft {s.ttft_s:.2f}s  {t.text.strip()!r}")
    rt.close()


if __name__ == "__main__":
    main()
