"""Templates of the two built-in workflows: a fully connected discussion round and a sequential pipeline.

Placeholders: `context` (shared passages, optional), `question`, `history` (the agent's own message
of the previous round), and `msg_<agent>` (another agent's latest message). Shared, long text comes
first so that its offsets depend on the agent's role prefix only.
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkcache.agents.template import AgentTemplate

ANSWER_HINT = "Answer with a short phrase."


@dataclass(frozen=True)
class Agent:
    """name: an identifier (it names the agent's message placeholder msg_<name>); role: its system prompt."""

    name: str
    role: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"agent name {self.name!r} must be an identifier (letters, digits, _)")
        if not self.role.strip():
            raise ValueError(f"agent {self.name!r}: role is empty")


def _head(with_context: bool) -> str:
    return ("Passages:\n{context}\n\nQuestion: {question}" if with_context else "Question: {question}")


def round_template(agent: Agent, others: list[Agent], with_context: bool, first: bool) -> AgentTemplate:
    """A discussion round: round 1 reads the question; later rounds also read the agent's previous answer
    (`history`) and every other agent's latest message."""
    body = _head(with_context)
    if not first:
        body += "\n\nYour previous answer: {history}\n\nThe other agents answered:"
        body += "".join(f"\n- {o.name}: {{msg_{o.name}}}" for o in others)
        body += "\n\nConsider their answers and give your final answer."
    body += "\n" + ANSWER_HINT
    return AgentTemplate(f"round{'1' if first else 'N'}:{agent.name}:{'ctx' if with_context else 'q'}:"
                         + ",".join(o.name for o in others), agent.role, body)


def round_turn(agent: Agent, agents: list[Agent], question: str, context: str | None,
               previous: dict | None) -> tuple[AgentTemplate, dict]:
    """Template and placeholder values of `agent`'s turn in a fully connected round; previous maps each
    agent's name to its message of the last round (None in round 1)."""
    others = [o for o in agents if o.name != agent.name]
    values: dict = {"question": question}
    if context is not None:
        values["context"] = context
    if previous is not None:
        values["history"] = previous[agent.name]
        values.update({f"msg_{o.name}": previous[o.name] for o in others})
    return round_template(agent, others, context is not None, previous is None), values


def chat_round_turn(tokenizer, agent: Agent, agents: list[Agent], question: str, context: str | None,
                    previous: dict | None) -> tuple[AgentTemplate, dict]:
    """`round_turn` laid out as the chat model does it (agents/chat_layout.py: the model's chat template, one
    turn per message): the role as system, the passages and the question as user turns, then each agent's last
    message (its own as the assistant's turn, read back as its stored KV)."""
    from chunkcache.agents.chat_layout import ChatMessage, chat_template

    msgs = [ChatMessage("system", agent.role)]
    if context is not None:
        msgs.append(ChatMessage("user", context))
    msgs.append(ChatMessage("user", question))
    known = {}
    for o in agents if previous is not None else ():
        m = previous[o.name]
        msgs.append(ChatMessage("assistant" if o.name == agent.name else "user", m.text or "(no answer)", o.name))
        known[m.text] = m.token_ids
    return chat_template(tokenizer, msgs, known.get)


def pipeline_template(agent: Agent, before: list[Agent], with_context: bool) -> AgentTemplate:
    """A pipeline stage: reads the question and the messages of every earlier stage, in order."""
    body = _head(with_context)
    if before:
        body += "\n\nEarlier steps:" + "".join(f"\n- {b.name}: {{msg_{b.name}}}" for b in before)
    body += "\n" + ANSWER_HINT
    return AgentTemplate(f"pipe:{agent.name}:{'ctx' if with_context else 'q'}:" + ",".join(b.name for b in before),
                         agent.role, body)
