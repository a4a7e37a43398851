"""Token-aware chunking: pack paragraphs, then sentences, then token windows, up to a token budget."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ChunkingConfig:
    """chunk_tokens: most tokens per chunk; overlap_tokens: tokens repeated between two windows when a
    single sentence is longer than chunk_tokens and must be cut."""

    chunk_tokens: int = 256
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if not 16 <= self.chunk_tokens <= 4096:
            raise ValueError(f"chunk_tokens must be in [16, 4096], got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ValueError(f"overlap_tokens must be in [0, chunk_tokens / 2), got {self.overlap_tokens}")


def _pieces(text: str) -> list[str]:
    """Paragraphs (blank-line separated), each split into sentences; whitespace kept inside sentences."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            out.extend(s for s in _SENTENCE.split(para.strip()) if s.strip())
            out.append("\n\n")
    return out


def split_text(text: str, tokenizer, cfg: ChunkingConfig = ChunkingConfig()) -> list[str]:
    """Chunks of `text`, each at most cfg.chunk_tokens tokens of `tokenizer`, in order.

    Sentences are never split unless one alone exceeds the budget; then it is cut into token windows
    overlapping by cfg.overlap_tokens. Paragraph breaks are kept inside a chunk.
    """
    def count(s: str) -> int:
        return len(tokenizer.encode(s, add_special_tokens=False))

    chunks: list[str] = []
    current = ""
    for piece in _pieces(text):
        if piece == "\n\n":
            current = current + "\n\n" if current else current
            continue
        joined = f"{current}{' ' if current and not current.endswith(chr(10)) else ''}{piece}"
        if count(joined) <= cfg.chunk_tokens:
            current = joined
            continue
        if current.strip():
            chunks.append(current.strip())
        if count(piece) <= cfg.chunk_tokens:
            current = piece
            continue
        ids = tokenizer.encode(piece, add_special_tokens=False)
        step = cfg.chunk_tokens - cfg.overlap_tokens
        for start in range(0, len(ids), step):
            chunks.append(tokenizer.decode(ids[start:start + cfg.chunk_tokens]).strip())
            if start + cfg.chunk_tokens >= len(ids):
                break
        current = ""
    if current.strip():
        chunks.append(current.strip())
    return [c for c in chunks if c]
