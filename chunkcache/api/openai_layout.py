"""Where the chunks are in an OpenAI request: chat messages and completion prompts as agent templates.

Chunk boundaries (each chunk's KV is stored and reused on its own, wherever it lands):
  documents   the extension field `documents: [str, ...]`: each text one chunk, placed before the content of
              the conversation's last user message (chat) or before the prompt (completions), joined by
              DOC_JOIN;
  parts       each text content part of a message (`content: [{"type": "text", "text": ...}, ...]`) one
              chunk, joined by PART_JOIN (as vLLM joins text parts);
  separator   LMCache's convention: inside a message's text (or a completion prompt) the separator string
              (ServerConfig.blend_special_str, LMCache's default " # # ") ends a chunk; it stays in the
              prompt as literal text between two chunks.
Chat: every message is also a chunk of its own (agents/chat_layout.py: the model's chat template via
`tokenizer.apply_chat_template`, the layout `ChunkCacheChatModel` uses); the first system (or developer)
message is the exact prefix. A completion prompt's last segment (after the last separator) is the
question: computed fresh, never a chunk. A request that marks no chunk (no documents, one text per
message, no separator) runs in `prefix` mode unless it names a mode: exact output, reusing the longest
token prefix it shares with a recent prompt (the system prompt, the earlier turns).
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkcache.agents.chat_layout import ChatMessage
from chunkcache.agents.template import AgentTemplate
from chunkcache.api.openai_schemas import ChatCompletionRequest, ChatMessageIn
from chunkcache.api.service import RequestError

DOC_JOIN = "\n\n"
PART_JOIN = "\n"
PLAIN_MODE = "prefix"


@dataclass(frozen=True)
class Segments:
    """Chunk texts, the literal text after each (the last one's: before the tail), and a literal tail."""

    chunks: tuple[str, ...]
    joins: tuple[str, ...]
    tail: str = ""


def split(texts: list[str], joins: list[str], separator: str) -> Segments:
    """texts (joined by joins, len(texts) - 1 of them) cut at every separator into chunks; a blank piece is no
    chunk, its text and the separators stay as literal text between two chunks (before the first: part of it).
    The tail is the literal text after the last chunk. Concatenated, the segments give the joined text back."""
    chunks: list[str] = []
    after: list[str] = []
    pending = ""  # literal text before the next chunk
    for i, text in enumerate(texts):
        pieces = text.split(separator) if separator else [text]
        for j, piece in enumerate(pieces):
            if piece.strip():
                if chunks:
                    after[-1] += pending
                else:  # literal text before the first chunk (a leading separator) stays in front of it
                    piece = pending + piece
                chunks.append(piece)
                after.append("")
                pending = ""
            else:
                pending += piece
            if j < len(pieces) - 1:
                pending += separator
        if i < len(joins):
            pending += joins[i]
    return Segments(tuple(chunks), tuple(after), pending)


def chat_messages(body: ChatCompletionRequest, separator: str) -> tuple[list[ChatMessage], bool]:
    """The conversation as chat-layout messages, and whether the request marks any chunk."""
    last_user = max((i for i, m in enumerate(body.messages) if m.role == "user"), default=None)
    if body.documents and last_user is None:
        raise RequestError("documents", "documents are placed before the last user message; there is none", 400)
    out, marked = [], bool(body.documents)
    for i, m in enumerate(body.messages):
        role = "system" if m.role == "developer" else m.role
        texts, joins = _content(m)
        if i == 0 and role == "system":
            out.append(ChatMessage(role, "".join(t + j for t, j in zip(texts, (*joins, ""), strict=True))))
            continue
        if i == last_user and body.documents:
            texts, joins = [*body.documents, *texts], [DOC_JOIN] * len(body.documents) + joins
        seg = split(texts, joins, separator)
        if not seg.chunks:
            raise RequestError(f"messages.{i}.content", "holds no text", 400)
        parts, after = list(seg.chunks), list(seg.joins)
        after[-1] += seg.tail
        if after[-1]:  # a trailing separator: kept in the message's text
            parts[-1] += after[-1]
        marked |= len(parts) > 1
        out.append(ChatMessage.of_parts(role, parts, after[:-1], m.name))
    return out, marked


def _content(m: ChatMessageIn) -> tuple[list[str], list[str]]:
    if isinstance(m.content, str):
        return [m.content], []
    texts = [p.text for p in m.content]  # type: ignore[union-attr]
    return texts, [PART_JOIN] * (len(texts) - 1)


def completion_template(prompt: str, documents: list[str] | None, separator: str,
                        tokenizer) -> tuple[AgentTemplate, dict[str, str], bool]:
    """A completion prompt as (template, placeholder values, marks a chunk). No chat template: the text as it
    is. Without chunks the prompt is one chunk up to its last token and the last token the fresh suffix."""
    docs = list(documents or [])
    seg = split([*docs, prompt], [DOC_JOIN] * len(docs), separator)
    marked = len(seg.chunks) > 1 or bool(docs)
    chunks, joins, tail = list(seg.chunks), list(seg.joins), seg.tail
    if not tail.strip():  # the last piece is the question: literal text, computed fresh
        if marked:
            tail = chunks.pop() + joins.pop() + tail
        else:
            head, last = _last_token(chunks[0] + joins[0] + tail, tokenizer)
            chunks, joins, tail = [head], [""], last
    if not chunks:
        raise RequestError("prompt", "holds no chunk", 400)
    body = "".join(f"{{c{i}}}{_escape(j)}" for i, j in enumerate(joins)) + _escape(tail)
    return AgentTemplate("completion", "", body, frame=("", "")), {f"c{i}": c for i, c in enumerate(chunks)}, marked


def _last_token(prompt: str, tokenizer) -> tuple[str, str]:
    """(head, tail) of prompt with tail its last few characters: the text of its last token where the two
    re-tokenize to the prompt's own ids, so the prompt is computed as the token ids it has."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if len(ids) < 2:
        raise RequestError("prompt", f"a prompt needs at least 2 tokens, got {len(ids)}", 400)
    for k in range(1, min(len(ids), 8)):
        head = tokenizer.decode(ids[:-k])
        if head.strip() and prompt.startswith(head) and len(head) < len(prompt):
            tail = prompt[len(head):]
            if tokenizer.encode(head, add_special_tokens=False) + tokenizer.encode(tail, add_special_tokens=False) \
                    == ids:
                return head, tail
    return prompt[:-1], prompt[-1:]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")
