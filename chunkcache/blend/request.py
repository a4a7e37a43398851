"""A blend request in token ids: a sequence of segments.

    [prefix][chunk 1]...[chunk n][suffix]

prefix: exact (computed alone at position 0, or found in the prefix cache);
chunks: cached segments, each placed by RoPE shift. Two annotations say more about some of them:
    placeholders: KVCOMM anchored placeholders (agent prompts): which chunk holds a placeholder's
        content, which chunk holds the literal text that follows it, and what its offsets depend on;
    responses: chunks that may be a generated response, whose KV is looked up under the response
        context first (the KV the generating turn already computed);
    fused: per chunk, the precompute context of its FusionRAG entry (the prefix, then its top-n neighbours'
        tokens; blend/fusion.py), read by the fused modes (fusion, fusionqc) only;
suffix: fresh text, always computed.
Positions follow in that order from 0. A RAG request has no annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkcache.blend.config import FUSED_MODES, UNFUSED_MODE


@dataclass(frozen=True)
class Placeholder:
    """An anchored placeholder. chunk: index of its content in BlendRequest.chunks; follow: index of the chunk
    holding the literal text after it (None: none); name: the placeholder's name (its anchor pool);
    reader_key: everything around it that its offsets depend on (template, literals); context_digest: a
    digest of the earlier placeholders' contents; document: user text (a passage, a question), not a message."""

    chunk: int
    follow: int | None
    name: str
    reader_key: str
    context_digest: str = ""
    document: bool = True


@dataclass(frozen=True)
class BlendRequest:
    """prefix_ids: the exact prefix; chunks: token ids of each cached segment; suffix_ids: always computed."""

    prefix_ids: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    suffix_ids: tuple[int, ...]
    placeholders: tuple[Placeholder, ...] = ()
    responses: tuple[int, ...] = ()  # chunk indices that may be generated responses
    fused: tuple[tuple[int, ...], ...] = ()  # per chunk: its fusion precompute context (empty: no fused entries)

    def __post_init__(self) -> None:
        if not self.chunks:
            raise ValueError("chunks: the chunk list is empty")
        for i, c in enumerate(self.chunks):
            if not c:
                raise ValueError(f"chunks[{i}] is empty")
        if not self.suffix_ids:
            raise ValueError("suffix_ids is empty: the question suffix must hold at least one token")
        n = len(self.chunks)
        if self.fused and len(self.fused) != n:
            raise ValueError(f"fused: {len(self.fused)} precompute contexts for {n} chunks")
        for p in self.placeholders:
            if not 0 <= p.chunk < n or (p.follow is not None and not p.chunk < p.follow < n):
                raise ValueError(f"placeholder {p.name!r}: chunk indices {p.chunk}, {p.follow} out of range")

    @classmethod
    def of(cls, prefix_ids, chunks, suffix_ids, placeholders=(), responses=(), fused=()) -> "BlendRequest":
        return cls(tuple(int(t) for t in prefix_ids), tuple(tuple(int(t) for t in c) for c in chunks),
                   tuple(int(t) for t in suffix_ids), tuple(placeholders), tuple(sorted(responses)),
                   tuple(tuple(int(t) for t in c) for c in fused))

    def runs(self, mode: str) -> str:
        """The mode that runs when this request asks for `mode`: a fused mode (fusion, fusionqc) without fused
        contexts runs UNFUSED_MODE (blend) over the plain entries (blend/fusion.py)."""
        return UNFUSED_MODE if mode in FUSED_MODES and not self.fused and self.chunks else mode

    @property
    def chunk_offsets(self) -> list[int]:
        """Start position of each chunk."""
        out, pos = [], len(self.prefix_ids)
        for c in self.chunks:
            out.append(pos)
            pos += len(c)
        return out

    @property
    def context_len(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def suffix_start(self) -> int:
        return len(self.prefix_ids) + self.context_len

    @property
    def num_tokens(self) -> int:
        return self.suffix_start + len(self.suffix_ids)

    def token_ids(self) -> list[int]:
        out = list(self.prefix_ids)
        for c in self.chunks:
            out.extend(c)
        return out + list(self.suffix_ids)
