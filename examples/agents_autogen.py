"""An AutoGen team debating on chunkcache, in-process: AssistantAgents in a RoundRobinGroupChat.

Two debaters and a judge take turns on a claim about a passage (the task). The only chunkcache-specific
line is the model client, `ChunkCacheChatCompletionClient`: each agent's prompt is laid out with the
model's chat template, every message a chunk, so the task is computed once and every reply is read by
the other agents as the KV its author's call computed (KVCOMM anchors estimate how it shifts).

    python examples/agents_autogen.py --mode kvcomm+epic --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat

PASSAGE = ("The Eiffel Tower was built for the 1889 World's Fair in Paris. Many artists of the time called it "
           "ugly and asked for it to be torn down after twenty years; it was kept because it served as a radio "
           "antenna. Today it is the most visited paid monument in the world.")
TASK = f"Passage: {PASSAGE}\n\nClaim: The Eiffel Tower should have been torn down in 1909. Debate it."
ROLES = {"pro": "You argue FOR the claim. Answer in one short sentence.",
         "con": "You argue AGAINST the claim. Answer in one short sentence.",
         "judge": "You judge the debate. Say which side argues better, in one short sentence."}


def build_team(client, rounds: int, stream: bool = False) -> RoundRobinGroupChat:  # type: ignore[no-untyped-def]
    """pro -> con -> judge, `rounds` times; each agent reads the task and every earlier reply (stream: the
    agents stream their replies token by token as ModelClientStreamingChunkEvents)."""
    agents = [AssistantAgent(name, client, system_message=role, model_client_stream=stream)
              for name, role in ROLES.items()]
    return RoundRobinGroupChat(agents, termination_condition=MaxMessageTermination(1 + rounds * len(agents)))


async def debate(client, rounds: int = 2, task: str = TASK) -> list[tuple[str, str, dict]]:  # type: ignore[no-untyped-def]
    """Run the team; per agent turn: (agent, text, the call's chunkcache stats)."""
    result = await build_team(client, rounds).run(task=task)
    replies = [m for m in result.messages if isinstance(m, TextMessage) and m.source != "user"]
    stats = list(client.recent_stats)[-len(replies):]
    return [(m.source, m.content, s) for m, s in zip(replies, stats, strict=True)]


def main() -> None:
    from chunkcache.config import EngineConfig
    from chunkcache.integrations.autogen import ChunkCacheChatCompletionClient

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", default="kvcomm+epic")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    client = ChunkCacheChatCompletionClient.from_config(EngineConfig(store="memory"), mode=args.mode,
                                                        max_tokens=args.max_tokens)
    for agent, text, s in asyncio.run(debate(client, args.rounds)):
        print(f"[{agent}] {text.strip()}\n    ttft {s['ttft_s']:.3f}s  reused {s['reused_tokens']}/{s['prompt_tokens']}"
              f"  anchors hit {s['anchors_hit']}  added {s['anchors_added']}")
    usage = client.total_usage()
    print(f"\nusage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens")


if __name__ == "__main__":
    main()
