"""LangChain integration.

- `ChunkCacheRetriever`: a langchain-core BaseRetriever over a chunkcache ChunkIndex; each Document
  carries `metadata["chunk_id"]`, the key of the chunk's KV in the store.
- `ChunkCacheRAG`: a Runnable that takes any LangChain retriever, retrieves for a question and
  generates over the documents with their cached KV (store hit when the text was seen before, a
  precompute otherwise). Documents with a known chunk_id use the stored text, so the tokens, and
  therefore the KV key, match exactly. `stream` / `astream` yield the documents, then the answer
  piece by piece (the server's incremental detokenizer), then stats and usage; the chunks add up
  to `invoke`'s output.
- `MiniLMEmbeddings`: the offline all-MiniLM-L6-v2 as LangChain Embeddings (for LangChain vector stores).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor
from langchain_core.runnables.utils import AddableDict
from pydantic import ConfigDict, Field

from chunkcache.blend.config import FUSED_MODES, BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.config import EngineConfig
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.embedder import Embedder
from chunkcache.retrieval.fused_entries import fuse_request
from chunkcache.runner.decode import SamplingConfig


class ChunkCacheRetriever(BaseRetriever):
    """Top-k chunks of a ChunkIndex by cosine similarity; metadata: chunk_id, score, doc_id.

    `k` is the default; `retriever.invoke(query, k=2)` overrides it for one call (LangChain's convention).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    index: ChunkIndex
    k: int = Field(4, ge=1)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        return [Document(page_content=h.text, id=h.key, metadata={"chunk_id": h.key, "score": h.score,
                                                                   "doc_id": h.doc_id})
                for h in self.index.search(query, k)]


class ChunkCacheRAG(Runnable[Any, dict]):
    """question (str, or {"question": str}) -> {"documents", "answer", "stats", "usage"}.

    stats: the blend stats of the generation (ttft_s, chunk_hits, chunk_misses, reused_tokens, ...);
    usage: LangChain's UsageMetadata (input/output/total tokens, EOS not counted;
    input_token_details.cache_read = the prompt tokens whose KV was reused).
    """

    def __init__(self, engine: ChunkCacheEngine | EngineConfig, retriever: BaseRetriever,
                 index: ChunkIndex | None = None, blend: BlendConfig = BlendConfig(),
                 sampling: SamplingConfig = SamplingConfig()) -> None:
        """engine: a built engine, or the EngineConfig to build one from."""
        self.engine = engine if isinstance(engine, ChunkCacheEngine) else ChunkCacheEngine.from_config(engine)
        self.retriever = retriever
        self.index = index
        self.blend = blend
        self.sampling = sampling

    def chunk_text(self, doc: Document) -> str:
        """The stored text of doc's chunk_id when the index knows it, else its page_content."""
        key = doc.metadata.get("chunk_id")
        rec = self.index.get(key) if self.index is not None and isinstance(key, str) else None
        return rec.text if rec is not None else doc.page_content

    def generate(self, question: str, documents: list[Document]) -> dict:
        """The output for these documents (no retrieval)."""
        out = AddableDict(documents=documents)
        for chunk in self.answer_stream(question, documents):
            out = out + chunk
        return dict(out)

    def answer_stream(self, question: str, documents: list[Document]) -> Iterator[AddableDict]:
        """{"answer": piece} per printable piece, then {"answer": "", "stats", "usage"}."""
        if not documents:
            raise ValueError("documents: the retriever returned no documents")
        texts = [self.chunk_text(d) for d in documents]
        req = self.engine.prompts.request(texts, question)
        if self.blend.mode in FUSED_MODES and self.index is not None:  # the corpus neighbours of the chunks it holds
            req = fuse_request(self.engine, req, texts, self.index.embedder, self.index)
        generated, ttft, stats = 0, 0.0, {}
        for tok, piece, ttft, stats in self.engine.stream(req, self.blend, self.sampling):
            generated += tok not in self.engine.eos_ids
            if piece:
                yield AddableDict(answer=piece)
        usage = {"input_tokens": stats["prompt_tokens"], "output_tokens": generated,
                 "total_tokens": stats["prompt_tokens"] + generated,
                 "input_token_details": {"cache_read": stats["reused_tokens"]}}
        yield AddableDict(answer="", stats={**stats, "ttft_s": ttft}, usage=usage)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[AddableDict]:
        question = _question(input)
        documents = self.retriever.invoke(question, config)
        yield AddableDict(documents=documents)
        yield from self.answer_stream(question, documents)

    async def astream(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[AddableDict]:
        chunks, done = self.stream(input, config), object()
        while (chunk := await run_in_executor(config, next, chunks, done)) is not done:
            yield chunk  # type: ignore[misc]

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        question = _question(input)
        return self.generate(question, self.retriever.invoke(question, config))


def _question(input: Any) -> str:
    question = input["question"] if isinstance(input, dict) else input
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question: expected a non-empty string")
    return question


class MiniLMEmbeddings(Embeddings):
    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or Embedder()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.encode([text])[0].tolist()
