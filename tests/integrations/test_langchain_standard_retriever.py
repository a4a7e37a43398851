"""LangChain's standard retriever suite (langchain-tests) on ChunkCacheRetriever, over a real index and MiniLM."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from chunkcache.blend.chunk_source import DictStore
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.integrations.langchain import ChunkCacheRetriever
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.runner.runner import ModelRunner

TEXTS = ["The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
         "Mount Kilimanjaro, in Tanzania, is the highest mountain in Africa.",
         "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
         "Honey bees communicate the location of flowers with a waggle dance.",
         "The Nile is the longest river in Africa and flows north into the Mediterranean."]
_INDEX: dict[str, ChunkIndex] = {}


@pytest.fixture(autouse=True, scope="module")
def index(smollm):  # type: ignore[no-untyped-def]
    """The passages' KV precomputed by the real model, their texts embedded into an in-memory index."""
    engine = ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), DictStore())
    idx = ChunkIndex(None)
    idx.add(engine.precompute(TEXTS), TEXTS, [len(engine.prompts.chunk_ids(t)) for t in TEXTS], doc_id="facts")
    _INDEX["index"] = idx
    yield idx
    _INDEX.pop("index").close()


class TestChunkCacheRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[ChunkCacheRetriever]:
        return ChunkCacheRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"index": _INDEX["index"]}

    @property
    def retriever_query_example(self) -> str:
        return "Which river flows through Brazil?"


def test_k_at_call_time_is_the_top_k_of_the_index(index) -> None:  # type: ignore[no-untyped-def]
    """k per call returns the same ranking as the constructor's k, cut at k; a bad k is named."""
    retriever = ChunkCacheRetriever(index=index, k=4)
    four = retriever.invoke("Which rivers are in Africa?")
    two = retriever.invoke("Which rivers are in Africa?", k=2)
    assert [d.page_content for d in two] == [d.page_content for d in four[:2]]
    assert {d.page_content for d in two} == {TEXTS[4], TEXTS[0]} and len(four) == 4
    assert len(retriever.invoke("Which rivers are in Africa?")) == 4  # the call's k did not stick
    with pytest.raises(ValueError, match="k must be"):
        retriever.invoke("rivers", k=0)
