"""A chat conversation laid out with the model's own chat template, each message a placeholder chunk.

`chat_template(tokenizer, messages)` renders the conversation with `tokenizer.apply_chat_template`
around one marker per message, then cuts the rendering at the markers: the text before the first
message and after the last (the generation prompt included) is the template's frame, each message's
text is a placeholder `{m0}`, `{m1}`, ... and the chat markup between two messages (turn end, next
role header) is the literal text that follows a placeholder. The prompt is token for token the chat
template's rendering of the conversation, while every message is still a chunk of its own whose KV
is shared by every prompt that contains it (BlendRequest layout: agents/template.py).

The `name` of a user, system or tool message (another agent, a user) is written as "name:\n" inside its
turn, before the text, so the chunk holds the text alone (a line break: the text tokenizes as it would
in the whole rendering). Assistant turns carry no name: they are the model's own voice, and a model
shown "name:" there starts its own replies with it. The first system message is the agent's role; later ones are turns.
A tokenizer without a chat template gets "Role: text" lines inside one user turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chunkcache.agents.template import AgentTemplate, Message

DEFAULT_ROLE = "You are a helpful assistant."
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation: role (system, user, assistant, tool), its text, an optional name."""

    role: str
    text: str
    name: str | None = None


def _mark(i: int) -> str:
    return f"\uE000CHAT{i}\uE000"


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def chat_template(tokenizer, messages: list[ChatMessage],
                  known_ids: Callable[[str], tuple[int, ...] | None] = lambda text: None
                  ) -> tuple[AgentTemplate, dict[str, str | Message]]:
    """The agent template and placeholder values of a conversation. known_ids(text): the token ids a
    message was generated as (a `Message`: its KV is stored under them), None for text from outside (a
    plain str: a document, which `kvcomm+<mode>` places by the chunk path when no anchor fits)."""
    if not messages:
        raise ValueError("messages: the message list is empty")
    role, rest, offset = DEFAULT_ROLE, list(messages), 0
    if rest[0].role == "system":
        role, rest, offset = rest[0].text or DEFAULT_ROLE, rest[1:], 1
    if not rest:
        raise ValueError("messages: nothing but a system message")
    values: dict[str, str | Message] = {}
    for i, msg in enumerate(rest):
        if not msg.text.strip():
            raise ValueError(f"messages[{i + offset}] ({msg.role}) is empty")
        ids = known_ids(msg.text)
        values[f"m{i}"] = Message(msg.text, ids, msg.name) if ids is not None else msg.text
    name = "chat:" + "|".join(f"{m.role}({m.name})" if m.name else m.role for m in rest)
    if not getattr(tokenizer, "chat_template", None):
        body = "\n\n".join(f"{_label(m)}: {{m{i}}}" for i, m in enumerate(rest))
        return AgentTemplate(name, role, body), values
    turns = [{"role": "system", "content": role}]
    turns += [{"role": m.role, "content": (f"{m.name}:\n" if m.name and m.role != "assistant" else "") + _mark(i)}
              for i, m in enumerate(rest)]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    pieces = []
    for i in range(len(rest)):
        if text.count(_mark(i)) != 1:
            raise ValueError(f"messages[{i + offset}] ({rest[i].role}): the chat template does not render it once")
        before, text = text.split(_mark(i))
        pieces.append(before)
    body = "".join(f"{_escape(lit) if i else ''}{{m{i}}}" for i, lit in enumerate(pieces))
    return AgentTemplate(name, role, body, frame=(pieces[0], text)), values


def _label(msg: ChatMessage) -> str:
    label = msg.role.title() if msg.role != "assistant" else "Assistant"
    return f"{label} ({msg.name})" if msg.name else label
