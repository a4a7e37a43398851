"""LangChain + chunkcache: retrieve with LangChain, generate with the chunks' cached KV.

    python examples/langchain_rag.py [--example 0] [--k 3]

1. Precompute and index the 10 passages of one MuSiQue example (KV in an in-memory store).
2. ChunkCacheRetriever (a LangChain retriever over the chunkcache index) + ChunkCacheRAG.
3. A plain LangChain InMemoryVectorStore retriever over the same passages: ChunkCacheRAG still
   reuses the passages' KV, because chunk KV is found by content.
"""

from __future__ import annotations

import argparse
import time

from langchain_core.vectorstores import InMemoryVectorStore

from chunkcache.bench.musique import load_examples, passage_text
from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine, EngineConfig
from chunkcache.integrations.langchain import ChunkCacheRAG, ChunkCacheRetriever, MiniLMEmbeddings
from chunkcache.retrieval.chunk_index import ChunkIndex
from chunkcache.runner.decode import SamplingConfig



def show(label: str, out: dict) -> None:
    s = out["stats"]
    print(f"{label}: {out['answer']!r}\n  TTFT {s['ttft_s']:.2f}s, chunk hits {s['chunk_hits']}, misses "
          f"{s['chunk_misses']}, reused {s['reused_tokens']}/{s['prompt_tokens']} prompt tokens")
    for d in out["documents"]:
        print(f"  - {(d.metadata.get('chunk_id') or 'no chunk id')[:12]:<12} {d.page_content[:70]!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--example", type=int, default=0)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    ex = load_examples(args.data, args.example + 1)[args.example]
    passages = [passage_text(c) for c in ex["ctxs"]]
    engine = ChunkCacheEngine.from_config(EngineConfig(store="memory", threads=args.threads))
    index = ChunkIndex(None)  # in memory; ChunkIndex(dir) persists texts + faiss index
    t0 = time.perf_counter()
    keys = engine.precompute(passages)
    index.add(keys, passages, [len(engine.prompts.chunk_ids(t)) for t in passages])
    print(f"precomputed and indexed {len(passages)} passages in {time.perf_counter() - t0:.1f}s")
    print(f"question: {ex['question']}  (gold: {ex['answers']})\n")

    blend, sampling = BlendConfig(mode="cacheblend", recompute_ratio=0.15), SamplingConfig(max_new_tokens=16)
    rag = ChunkCacheRAG(engine, ChunkCacheRetriever(index=index, k=args.k), index, blend, sampling)
    show("chunkcache retriever", rag.invoke(ex["question"]))

    store = InMemoryVectorStore(MiniLMEmbeddings(index.embedder))
    store.add_texts(passages)
    lc = ChunkCacheRAG(engine, store.as_retriever(search_kwargs={"k": args.k}), blend=blend, sampling=sampling)
    chain = lc | (lambda out: out["answer"])  # composes like any LangChain Runnable
    show("LangChain InMemoryVectorStore retriever", lc.invoke({"question": ex["question"]}))
    print(f"\nLCEL chain answer: {chain.invoke(ex['question'])!r}")


if __name__ == "__main__":
    main()
