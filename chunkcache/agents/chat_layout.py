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

A message may hold several chunks (`ChatMessage.of_parts`: documents before a question, OpenAI content
parts, texts between separators): each part is a placeholder `{m<i>_<j>}` of its own and the literal
text joining two parts is the text that follows it, so every part's KV is shared on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chunkcache.agents.template import AgentTemplate, Message

DEFAULT_ROLE = "You are a helpful assistant."
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation: role (system, user, assistant, tool), its text, an optional name.
    parts, joins: the text as several chunks, text == parts[0] + joins[0] + parts[1] + ... (`of_parts`);
    empty parts: the text is one chunk."""

    role: str
    text: str
    name: str | None = None
    parts: tuple[str, ...] = ()
    joins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.parts and (len(self.joins) != len(self.parts) - 1
                           or "".join(p + j for p, j in zip(self.parts, (*self.joins, ""), strict=True)) != self.text):
            raise ValueError(f"{self.role} message: parts and joins do not make up its text")

    @classmethod
    def of_parts(cls, role: str, parts: list[str], joins: list[str], name: str | None = None) -> "ChatMessage":
        """A message made of chunks `parts`, joins[i] the literal text between parts[i] and parts[i + 1]."""
        if parts and len(joins) != len(parts) - 1:
            raise ValueError(f"{role} message: {len(parts)} parts take {len(parts) - 1} joins, got {len(joins)}")
        text = "".join(p + j for p, j in zip(parts, (*joins, ""), strict=True))
        return cls(role, text, name, tuple(parts), tuple(joins)) if len(parts) > 1 else cls(role, text, name)

    def chunks(self, i: int) -> list[tuple[str, str, str]]:
        """(placeholder name, chunk text, literal text after it) of message i (the last join is "")."""
        if not self.parts:
            return [(f"m{i}", self.text, "")]
        return [(f"m{i}_{j}", p, s) for j, (p, s) in enumerate(zip(self.parts, (*self.joins, ""), strict=True))]


def _mark(name: str) -> str:
    return f"\uE000CHAT{name}\uE000"


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
        for slot, text, _ in msg.chunks(i):
            if not text.strip():
                raise ValueError(f"messages[{i + offset}] ({msg.role}) is empty" if slot == f"m{i}" else
                                 f"messages[{i + offset}] ({msg.role}): part {slot.split('_')[1]} is empty")
            ids = known_ids(text)
            values[slot] = Message(text, ids, msg.name) if ids is not None else text
    name = "chat:" + "|".join((f"{m.role}({m.name})" if m.name else m.role) + (f"*{len(m.parts)}" if m.parts else "")
                              for m in rest)
    if not getattr(tokenizer, "chat_template", None):
        body = "\n\n".join(f"{_label(m)}: " + "".join(f"{{{s}}}{_escape(j)}" for s, _, j in m.chunks(i))
                           for i, m in enumerate(rest))
        return AgentTemplate(name, role, body), values
    turns = [{"role": "system", "content": role}]
    turns += [{"role": m.role, "content": (f"{m.name}:\n" if m.name and m.role != "assistant" else "")
               + "".join(_mark(s) + j for s, _, j in m.chunks(i))} for i, m in enumerate(rest)]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    slots, pieces = [], []
    for i, m in enumerate(rest):
        for s, _, _ in m.chunks(i):
            if text.count(_mark(s)) != 1:
                raise ValueError(f"messages[{i + offset}] ({m.role}): the chat template does not render it once")
            before, text = text.split(_mark(s))
            slots.append(s)
            pieces.append(before)
    body = "".join(f"{_escape(lit) if k else ''}{{{s}}}" for k, (s, lit) in enumerate(zip(slots, pieces, strict=True)))
    return AgentTemplate(name, role, body, frame=(pieces[0], text)), values


def _label(msg: ChatMessage) -> str:
    label = msg.role.title() if msg.role != "assistant" else "Assistant"
    return f"{label} ({msg.name})" if msg.name else label
