"""A blend request in token ids: [prefix][chunk 1]...[chunk n][suffix]."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlendRequest:
    """prefix_ids: the cached system prefix (reused exactly); chunks: token ids of each chunk;
    suffix_ids: the question, always computed. Positions follow in that order from 0."""

    prefix_ids: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    suffix_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.chunks:
            raise ValueError("chunks: the chunk list is empty")
        for i, c in enumerate(self.chunks):
            if not c:
                raise ValueError(f"chunks[{i}] is empty")
        if not self.suffix_ids:
            raise ValueError("suffix_ids is empty: the question suffix must hold at least one token")

    @classmethod
    def of(cls, prefix_ids, chunks, suffix_ids) -> "BlendRequest":
        return cls(tuple(int(t) for t in prefix_ids), tuple(tuple(int(t) for t in c) for c in chunks),
                   tuple(int(t) for t in suffix_ids))

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
