"""Agent prompt templates with placeholders, compiled to token ids once per (template, tokenizer).

A template is a system prompt (the agent's role) and a user body with `{name}` placeholders, e.g.
"Passages:\n{passages}\n\nQuestion: {question}". Rendered with the model's chat template it becomes

    [prefix][P1][F1][P2][F2]...[Pk][suffix]   (a BlendRequest: `CompiledTemplate.bind`)

prefix: everything before the first placeholder (chat header + role + body head), exact per agent;
Pi: a placeholder's text (a chunk: its KV is shared by every agent that reads it);
Fi: the literal text that follows Pi up to the next placeholder (may be empty);
suffix: the literal text after the last placeholder plus the chat turn end, always computed.
Each piece is tokenized on its own, so a placeholder's text has the same ids in every prompt.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

from chunkcache.blend.prompt import PromptTemplate
from chunkcache.blend.request import BlendRequest, Placeholder

_MARK = "\uE000AGENT\uE000"


@dataclass(frozen=True)
class Message:
    """A placeholder value: text, and the token ids it was generated as (None: tokenize the text)."""

    text: str
    token_ids: tuple[int, ...] | None = None
    author: str | None = None


@dataclass(frozen=True)
class AgentTemplate:
    """name: unique per template; system: the agent's role; body: user text with {placeholder} fields;
    frame: the rendered text (before, after) the body when it is not the chat template's system turn plus
    one user turn around it (a whole conversation: agents/chat_layout.py), None for that default."""

    name: str
    system: str
    body: str
    frame: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("template name is empty")
        _ = self.placeholders  # validates the body

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Placeholder names in order of appearance; each may appear once."""
        names = []
        try:
            fields = list(string.Formatter().parse(self.body))
        except ValueError as err:
            raise ValueError(f"template {self.name!r}: malformed body ({err})") from None
        for _, field, spec, conv in fields:
            if field is None:
                continue
            if not field.isidentifier() or spec or conv:
                raise ValueError(f"template {self.name!r}: placeholder {{{field}}} must be a plain identifier")
            if field in names:
                raise ValueError(f"template {self.name!r}: placeholder {field!r} appears twice")
            names.append(field)
        return tuple(names)

    def literals(self) -> list[str]:
        """The body's literal pieces around the placeholders: len(placeholders) + 1 strings."""
        out = [""]
        for text, field, _, _ in string.Formatter().parse(self.body):
            out[-1] += text  # Formatter.parse already turned {{ and }} into { and }
            if field is not None:
                out.append("")
        return out


@dataclass(frozen=True)
class Slot:
    """One placeholder in a compiled template. reader_key identifies everything before and after it
    that its KV offset depends on: the template's literal ids and placeholder names up to and
    including its following text (an anchor's measured offsets are valid for one reader_key)."""

    name: str
    follow_ids: tuple[int, ...]
    reader_key: str


@dataclass(frozen=True)
class CompiledTemplate:
    template: AgentTemplate
    prefix_ids: tuple[int, ...]
    slots: tuple[Slot, ...]
    suffix_ids: tuple[int, ...]

    @classmethod
    def compile(cls, template: AgentTemplate, tokenizer) -> "CompiledTemplate":
        chat = (PromptTemplate(*template.frame) if template.frame is not None
                else PromptTemplate.from_tokenizer(tokenizer, template.system))
        lits = template.literals()
        names = template.placeholders

        def enc(text: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(text, add_special_tokens=False)) if text else ()

        if not names:
            return cls(template, enc(chat.prefix_text + lits[0]), (), enc(chat.suffix_text))
        prefix = enc(chat.prefix_text + lits[0])
        suffix = enc(lits[-1] + chat.suffix_text)
        h = hashlib.sha256(repr(prefix).encode())
        slots = []
        for i, name in enumerate(names):
            follow = enc(lits[i + 1]) if i + 1 < len(names) else ()
            h.update(f"|{name}|{follow}".encode())
            slots.append(Slot(name, follow, h.copy().hexdigest()[:32]))
        return cls(template, prefix, tuple(slots), suffix)

    def bind(self, values: dict[str, str | Message], tokenizer, max_positions: int) -> BlendRequest:
        """Fill every placeholder: the blend request [prefix][P1][F1]...[Pk][suffix], each Pi and non-empty Fi a
        chunk, each Pi an anchored Placeholder (a plain str value is a document; a Message with token ids may
        be a stored response). Raises ValueError naming the placeholder on any mismatch."""
        names = {s.name for s in self.slots}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"template {self.template.name!r} has no placeholder {unknown[0]!r} "
                             f"(its placeholders: {[s.name for s in self.slots]})")
        missing = [s.name for s in self.slots if s.name not in values]
        if missing:
            raise ValueError(f"template {self.template.name!r}: no value for placeholder {missing[0]!r}")
        if not self.slots:
            raise ValueError(f"template {self.template.name!r} has no placeholders: nothing to place")
        chunks, placeholders, responses = [], [], []
        digest = hashlib.sha256(b"ctx")
        for s in self.slots:
            v = values[s.name]
            msg = v if isinstance(v, Message) else Message(str(v))
            ids = msg.token_ids if msg.token_ids is not None else tuple(tokenizer.encode(msg.text,
                                                                                         add_special_tokens=False))
            if not ids:
                raise ValueError(f"template {self.template.name!r}: placeholder {s.name!r} is empty")
            if msg.token_ids is not None:
                responses.append(len(chunks))
            placeholders.append(Placeholder(len(chunks), len(chunks) + 1 if s.follow_ids else None, s.name,
                                            s.reader_key, digest.hexdigest()[:32], not isinstance(v, Message)))
            digest.update(repr(tuple(int(t) for t in ids)).encode())
            chunks.append(ids)
            if s.follow_ids:
                chunks.append(s.follow_ids)
        req = BlendRequest.of(self.prefix_ids, chunks, self.suffix_ids, placeholders, responses)
        if req.num_tokens > max_positions:
            longest = max(placeholders, key=lambda p: len(req.chunks[p.chunk]))
            raise ValueError(f"template {self.template.name!r}: prompt of {req.num_tokens} tokens exceeds the "
                             f"model context of {max_positions} (longest placeholder {longest.name!r}: "
                             f"{len(req.chunks[longest.chunk])} tokens)")
        return req
