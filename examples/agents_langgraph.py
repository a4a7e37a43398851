"""A LangGraph graph of three agents on one chunkcache-backed chat model.

The graph is plain LangGraph: each node sends its role as a system message plus the conversation so far
to the chat model and appends the reply. Swapping in `ChunkCacheChatModel` is the only chunkcache-
specific line: messages read by several agents reuse their KV (KVCOMM anchors once the pool is warm).

    python examples/agents_langgraph.py --mode kvcomm+epic --questions 4
"""

from __future__ import annotations

import argparse

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

ROLES = {
    "researcher": "You are a researcher. State the key fact that answers the question.",
    "critic": "You are a critic. Point out what the researcher may have missed.",
    "writer": "You are a writer. Give the final short answer.",
}
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is the largest planet?",
             "What language is spoken in Brazil?", "How many legs does a spider have?"]


def build_graph(llm):
    """researcher -> critic -> writer; each node reads every earlier message."""

    def node(name: str):
        def run(state: MessagesState) -> dict:
            reply = llm.invoke([SystemMessage(ROLES[name])] + state["messages"])
            reply.name = name
            return {"messages": [reply]}
        return run

    g = StateGraph(MessagesState)
    for name in ROLES:
        g.add_node(name, node(name))
    g.add_edge(START, "researcher")
    g.add_edge("researcher", "critic")
    g.add_edge("critic", "writer")
    g.add_edge("writer", END)
    return g.compile()


def make_llm(mode: str, max_tokens: int, anchor_dir: str | None = None):
    from chunkcache.agents.langchain_chat import ChunkCacheChatModel
    from chunkcache.agents.runtime import AgentRuntime
    from chunkcache.runner.loader import load_model
    from chunkcache.runner.runner import ModelRunner

    lm = load_model()
    runtime = AgentRuntime(ModelRunner(lm.model, lm.tokenizer), anchor_dir=anchor_dir)
    return ChunkCacheChatModel(runtime=runtime, mode=mode, max_tokens=max_tokens)


def run(llm, questions: list[str]) -> list[dict]:
    """Run the graph on each question; per question: the messages and every agent turn's chunkcache stats."""
    graph = build_graph(llm)
    out = []
    for q in questions:
        state = graph.invoke({"messages": [HumanMessage(q)]})
        turns = [m for m in state["messages"] if m.type == "ai"]
        out.append({"question": q, "answers": {m.name: m.content for m in turns},
                    "stats": {m.name: m.response_metadata["chunkcache"] for m in turns}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", default="kvcomm+epic")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--anchor-dir", default=None)
    args = ap.parse_args()
    llm = make_llm(args.mode, args.max_tokens, args.anchor_dir)
    for r in run(llm, QUESTIONS[: args.questions]):
        print(f"\nQ: {r['question']}")
        for name, text in r["answers"].items():
            s = r["stats"][name]
            print(f"  {name:<10} ttft {s['ttft_s']:.3f}s reused {s['reused_tokens']}/{s['prompt_tokens']} "
                  f"anchors hit {s['anchors_hit']} added {s['anchors_added']}: {text!r}")


if __name__ == "__main__":
    main()
