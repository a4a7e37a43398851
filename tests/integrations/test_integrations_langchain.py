"""LangChain retriever and RAG runnable over the real model, a real index and real MiniLM embeddings."""

from __future__ import annotations

import pytest
import torch
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore

from chunkcache.blend.config import DEFAULT_MODE, BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.integrations.langchain import ChunkCacheRAG, ChunkCacheRetriever, MiniLMEmbeddings
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.retrieval.fused_entries import precompute_fused_entries
from chunkcache.runner.decode import SamplingConfig

TEXTS = ["The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
         "Mount Kilimanjaro, in Tanzania, is the highest mountain in Africa.",
         "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
         "Honey bees communicate the location of flowers with a waggle dance."]
SAMPLING = SamplingConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    engine = ChunkCacheEngine.from_config(EngineConfig(store="memory", threads=1))
    index = ChunkIndex(None)
    keys = engine.precompute(TEXTS)
    index.add(keys, TEXTS, [len(engine.prompts.chunk_ids(t)) for t in TEXTS], doc_id="facts")
    yield engine, index, keys
    index.close()


def test_integrations_retriever_documents_carry_chunk_ids(setup) -> None:  # type: ignore[no-untyped-def]
    engine, index, keys = setup
    retriever = ChunkCacheRetriever(index=index, k=2)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("Which is the tallest mountain in Africa?")
    assert len(docs) == 2 and docs[0].page_content == TEXTS[1]
    assert docs[0].metadata["chunk_id"] == keys[1] == engine.source.key(engine.prompts.chunk_ids(TEXTS[1]))
    assert docs[0].metadata["doc_id"] == "facts" and docs[0].metadata["score"] >= docs[1].metadata["score"]


def test_integrations_rag_reuses_cached_kv(setup) -> None:  # type: ignore[no-untyped-def]
    engine, index, _ = setup
    cfg = BlendConfig(mode="cacheblend")
    rag = ChunkCacheRAG(engine, ChunkCacheRetriever(index=index, k=2), index, cfg, SAMPLING)
    out = rag.invoke({"question": "When was the Eiffel Tower completed?"})
    assert out["documents"][0].page_content == TEXTS[2]
    assert out["stats"]["chunk_misses"] == 0 and out["stats"]["chunk_hits"] == 3  # prefix + 2 chunks
    direct = engine.answer([d.page_content for d in out["documents"]], "When was the Eiffel Tower completed?",
                           cfg, SAMPLING)
    assert out["answer"] == direct.text and out["answer"]


def test_integrations_rag_default_mode_places_the_index_fused_entries(setup) -> None:  # type: ignore[no-untyped-def]
    """The default mode (fusionqc) takes the index's neighbours for the chunks it holds: entries precomputed for the
    corpus (retrieval/fused_entries.py) are placed, none computed. Without an index there is no corpus: blend."""
    engine, index, _ = setup
    precompute_fused_entries(engine, index, TEXTS, index.embedder.encode(TEXTS))
    question = "When was the Eiffel Tower completed?"
    out = ChunkCacheRAG(engine, ChunkCacheRetriever(index=index, k=3), index, sampling=SAMPLING).invoke(question)
    assert out["stats"]["mode"] == DEFAULT_MODE and not out["stats"]["fallbacks"]
    assert out["stats"]["chunk_misses"] == 0 and out["answer"]
    bare = ChunkCacheRAG(engine, ChunkCacheRetriever(index=index, k=3), sampling=SAMPLING).invoke(question)
    assert bare["stats"]["mode"] == "blend" and bare["stats"]["fallbacks"][0].startswith(f"{DEFAULT_MODE}:")
    blend = ChunkCacheRAG(engine, ChunkCacheRetriever(index=index, k=3), blend=BlendConfig(mode="blend"),
                          sampling=SAMPLING).invoke(question)
    assert bare["answer"] == blend["answer"] and not blend["stats"]["fallbacks"]


def test_integrations_any_langchain_retriever_gets_kv_by_content(setup) -> None:  # type: ignore[no-untyped-def]
    engine, index, _ = setup
    store = InMemoryVectorStore(MiniLMEmbeddings(index.embedder))
    store.add_texts(TEXTS)
    rag = ChunkCacheRAG(engine, store.as_retriever(search_kwargs={"k": 2}), blend=BlendConfig(mode="naive"),
                        sampling=SAMPLING)
    out = rag.invoke("How do honey bees communicate?")
    assert "chunk_id" not in out["documents"][0].metadata and out["documents"][0].page_content == TEXTS[3]
    assert out["stats"]["chunk_misses"] == 0  # same texts -> same keys as the precomputed chunks

    class Fixed(BaseRetriever):
        docs: list[Document]

        def _get_relevant_documents(self, query, *, run_manager):  # type: ignore[no-untyped-def]
            return self.docs

    unseen = Fixed(docs=[Document(page_content="Saturn has at least 140 known moons.")])
    rag = ChunkCacheRAG(engine, unseen, blend=BlendConfig(mode="naive"), sampling=SAMPLING)
    first, second = rag.invoke("How many moons?"), rag.invoke("How many moons?")
    assert first["stats"]["chunk_misses"] == 1 and second["stats"]["chunk_misses"] == 0
    assert first["answer"] == second["answer"]
    with pytest.raises(ValueError, match="question"):
        rag.invoke("  ")


def test_integrations_classes_take_the_engine_config(setup) -> None:  # type: ignore[no-untyped-def]
    """ChunkCacheRAG and ChunkCacheChatModel build from an EngineConfig, or share a built engine."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from chunkcache.agents.langchain_chat import ChunkCacheChatModel
    from chunkcache.config import StoreSettings

    engine, index, _ = setup
    cfg = EngineConfig(threads=1, store=StoreSettings(disk=False, cpu_bytes=64 << 20))
    rag = ChunkCacheRAG(cfg, ChunkCacheRetriever(index=index, k=2), index, sampling=SAMPLING)
    assert isinstance(rag.engine, ChunkCacheEngine) and rag.engine is not engine
    assert rag.engine.source.store.stats()["tiers"]["cpu"]["budget_bytes"] == 64 << 20
    out = rag.invoke("Which is the highest mountain in Africa?")
    assert out["stats"]["chunk_misses"] >= 2 and out["answer"]

    chat = ChunkCacheChatModel.from_engine(rag.engine, mode="blend", max_tokens=4)
    assert chat.runtime.runner is rag.engine.runner and chat.runtime.store is rag.engine.source.store
    reply = chat.invoke([SystemMessage("You are terse."), HumanMessage("Name a river in Brazil.")])
    assert reply.content and reply.response_metadata["chunkcache"]["prompt_tokens"] > 0


def test_integrations_rag_streams_the_answer_and_reports_usage(setup) -> None:  # type: ignore[no-untyped-def]
    """stream: documents first, then the answer piece by piece, then stats and usage; they add up to invoke."""
    import asyncio

    engine, index, _ = setup
    cfg, sampling = BlendConfig(mode="cacheblend"), SamplingConfig(max_new_tokens=12)
    rag = ChunkCacheRAG(engine, ChunkCacheRetriever(index=index, k=2), index, cfg, sampling)
    question = "Where does the Amazon river flow?"
    chunks = list(rag.stream(question))
    assert list(chunks[0]) == ["documents"] and chunks[0]["documents"][0].page_content == TEXTS[0]
    pieces = [c["answer"] for c in chunks[1:-1]]
    assert len(pieces) >= 3 and all(pieces) and list(chunks[-1]) == ["answer", "stats", "usage"]
    full = rag.invoke(question)
    assert "".join(pieces) == full["answer"]
    direct = engine.answer([d.page_content for d in full["documents"]], question, cfg, sampling)
    generated = len([t for t in direct.token_ids if t not in engine.eos_ids])
    assert full["usage"] == {"input_tokens": full["stats"]["prompt_tokens"], "output_tokens": generated,
                             "total_tokens": full["stats"]["prompt_tokens"] + generated,
                             "input_token_details": {"cache_read": full["stats"]["reused_tokens"]}}
    assert full["usage"]["input_token_details"]["cache_read"] > 0 and chunks[-1]["usage"] == full["usage"]

    async def collect() -> list:
        return [c async for c in rag.astream({"question": question})]

    assert "".join(c.get("answer", "") for c in asyncio.run(collect())) == full["answer"]
