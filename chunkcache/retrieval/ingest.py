"""Document ingestion: chunk (token-aware) -> embed -> precompute KV -> record + index.

Every model call goes through `run(fn)`, so a server can route them through its single model
worker (interleaving them with generation requests) and the CLI can call them directly.
`progress(stage, done, total)` is called as work completes; stages: chunking, embedding, precompute, fusion
(with `fused`: each new chunk's fused entry behind its corpus neighbours, retrieval/fused_entries.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.chunking import ChunkingConfig, split_text
from chunkcache.retrieval.fused_entries import precompute_fused_entries

Progress = Callable[[str, int, int], None]
STAGES = ("chunking", "embedding", "precompute", "fusion")


@dataclass(frozen=True)
class Document:
    text: str
    doc_id: str | None = None

    def __post_init__(self) -> None:
        if not self.text or not self.text.strip():
            raise ValueError(f"document {self.doc_id or ''} text is empty".replace("  ", " "))


@dataclass
class IngestResult:
    documents: int = 0
    chunk_keys: list[str] = field(default_factory=list)
    tokens: int = 0
    new_chunks: int = 0  # chunks whose KV was computed now (the rest were already stored)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # chunking, embedding, precompute, fusion, index
    fusion_extra_tokens: int = 0  # tokens computed for the fused entries beyond the plain precompute

    def as_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "chunks": len(self.chunk_keys), "chunk_keys": self.chunk_keys,
                "tokens": self.tokens, "new_chunks": self.new_chunks, "fusion_extra_tokens": self.fusion_extra_tokens,
                "seconds": self.seconds,
                "stage_seconds": self.stage_seconds}


class Ingestor:
    def __init__(self, engine: ChunkCacheEngine, index: ChunkIndex, cfg: ChunkingConfig = ChunkingConfig(),
                 run: Callable[[Callable[[], Any]], Any] | None = None, embed_batch: int = 32,
                 fused: bool = True) -> None:
        self.engine = engine
        self.fused = fused
        self.index = index
        self.cfg = cfg
        self.run = run or (lambda fn: fn())
        self.embed_batch = embed_batch

    def ingest(self, docs: list[Document], progress: Progress | None = None) -> IngestResult:
        progress = progress or (lambda stage, done, total: None)
        t0 = time.perf_counter()
        tok = self.engine.tokenizer
        res = IngestResult(documents=len(docs), stage_seconds=dict.fromkeys((*STAGES, "index"), 0.0))
        pieces: list[tuple[str | None, str]] = []  # (doc_id, chunk text)
        for i, doc in enumerate(docs):
            pieces += [(doc.doc_id, c) for c in self.run(lambda d=doc: split_text(d.text, tok, self.cfg))]
            progress("chunking", i + 1, len(docs))
        res.stage_seconds["chunking"] = time.perf_counter() - t0
        texts = [t for _, t in pieces]
        vecs = []
        t1 = time.perf_counter()
        for start in range(0, len(texts), self.embed_batch):
            batch = texts[start:start + self.embed_batch]
            vecs.append(self.run(lambda b=batch: self.index.embedder.encode(b)))
            progress("embedding", start + len(batch), len(texts))
        res.stage_seconds["embedding"] = time.perf_counter() - t1
        for i, (doc_id, text) in enumerate(pieces):
            t1 = time.perf_counter()
            key, n_tokens, known = self.run(lambda t=text: self._precompute(t))
            self.engine.source.flush()  # the KV is in every tier (Redis: other replicas) before its text is recorded
            t2 = time.perf_counter()
            vec = vecs[i // self.embed_batch][i % self.embed_batch: i % self.embed_batch + 1]  # [1, 384]
            self.index.add([key], [text], [n_tokens], doc_id, vec, save=False)
            res.stage_seconds["precompute"] += t2 - t1
            res.stage_seconds["index"] += time.perf_counter() - t2
            res.chunk_keys.append(key)
            res.tokens += n_tokens
            res.new_chunks += not known
            progress("precompute", i + 1, len(pieces))
        t2 = time.perf_counter()
        self.index.save()  # once per batch: saving per chunk rewrote the whole file each time
        res.stage_seconds["index"] += time.perf_counter() - t2
        if self.fused:  # after the whole batch is indexed: its chunks are each other's neighbours too
            t2 = time.perf_counter()
            for i, text in enumerate(texts):
                vec = vecs[i // self.embed_batch][i % self.embed_batch: i % self.embed_batch + 1]  # [1, 384]
                res.fusion_extra_tokens += self.run(
                    lambda t=text, v=vec: precompute_fused_entries(self.engine, self.index, [t], v))
                progress("fusion", i + 1, len(texts))
            self.engine.source.flush()
            res.stage_seconds["fusion"] = time.perf_counter() - t2
        res.seconds = time.perf_counter() - t0
        return res

    def _precompute(self, text: str) -> tuple[str, int, bool]:
        """(chunk key, token count, KV was already stored); tokenizer and model used on the caller's thread."""
        ids = self.engine.prompts.chunk_ids(text)
        known = self.engine.source.holds(ids)
        return self.engine.precompute([text])[0], len(ids), known
