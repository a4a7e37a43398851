"""Where should a fused entry's neighbours come from, how many, in which order? FusionRAG (arXiv 2601.12904,
section 3.1) precomputes each chunk of the knowledge base behind its top-n most similar chunks *of the knowledge
base*, most similar first (X = system, top1, ..., topn, chunk), and recommends n = 10. `bench tasks` draws them
from the example's own 10 paragraphs instead, with n = 2, nearest placed next to the chunk. This runs fusionqc
on HotpotQA with each variant's fused entries, every variant paired with full prefill on the same ids:

  own:N       neighbours among the example's own paragraphs (what `bench tasks` does; own:2 is its setting)
  pool:N      neighbours among every paragraph of the split's first POOL examples (a knowledge base of
              distinct paragraphs, the chunk itself excluded), nearest placed next to the chunk
  paper:N     pool:N in the paper's order, most similar first (right after the system prompt)
  ownplaced:N own:N (same neighbours, same order) computed as the paper does, as below
  placed:N    paper:N computed as the paper does (its Eq. 10): the neighbours' own cached plain KV placed in
              that order (RoPE-shifted), only the chunk's tokens computed over it; the entry is keyed behind
              PLACED + the context, so it never meets an exact entry

Fidelity only: TTFT does not depend on the variant (the same chunk tokens are placed and selected); ingestion
does (N neighbours' tokens precomputed again per chunk; reported per variant).

python benchmarks/explore_fusion_corpus.py dev 30 200 own:2,pool:2,paper:10 benchmarks/OUT.json [ratio] [skip]
(split, examples, pool examples, variants, JSON out)
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from explore_score_layers import scratch_engine, summary

from chunkcache.bench.rag import evaluate_request
from chunkcache.bench.tasks.runner import score_rows, task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.fusion import fuse, neighbours, precompute_fused
from chunkcache.blend.segment import rotate
from chunkcache.retrieval.embedder import Embedder
from chunkcache.store.chunk_kv import ChunkKV


def pool_neighbours(chunk_vecs, chunk_texts, pool_vecs, pool_texts, n: int) -> list[list[int]]:
    """Per chunk, the indices of its n most cosine-similar pool paragraphs, most similar first, its own text
    excluded (vectors [*, dim])."""
    a = torch.nn.functional.normalize(torch.as_tensor(chunk_vecs, dtype=torch.float32), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(pool_vecs, dtype=torch.float32), dim=1)
    sims = a @ b.T  # [n_chunks, n_pool]
    where = {t: j for j, t in enumerate(pool_texts)}
    for i, t in enumerate(chunk_texts):
        sims[i, where[t]] = float("-inf")
    return sims.topk(n, dim=1).indices.tolist()


PLACED = 2**32 - 2  # not a token: marks an entry computed over its neighbours' placed plain KV


@torch.inference_mode()
def put_placed(source, chunk: tuple, neighbours: list) -> tuple:
    """Store the chunk's entry computed over [prefix entry | each neighbour's plain entry, in order] (keys
    rotated to their places); returns its context for BlendRequest.fused: (PLACED, *prefix, *neighbours)."""
    prefix, runner = source.context_ids, source.runner
    ctx = tuple(prefix) + tuple(t for ns in neighbours for t in ns)
    cache = runner.new_cache(len(ctx) + len(chunk))
    pre, _ = source.get(prefix, ())
    cache.write(slice(None), slice(0, len(prefix)), pre.keys, pre.values)
    at = len(prefix)
    for ns in neighbours:
        kv, _ = source.get(tuple(ns))
        keys = rotate(kv.keys, at - kv.base_position, runner.inv_freq, runner.use_triton)
        cache.write(slice(None), slice(at, at + len(ns)), keys, kv.values)
        at += len(ns)
    runner.extend(torch.tensor(chunk, dtype=torch.int64, device=runner.device), cache)
    marked = (PLACED, *ctx)
    p, n = len(ctx), len(chunk)
    source.store.put(ChunkKV(source.key(chunk, marked), runner.fingerprint, tuple(chunk), p,
                             cache.keys[:, :, p:p + n].clone(), cache.values[:, :, p:p + n].clone()))
    return marked


def main() -> None:
    split, limit, pool_n, spec, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    ratio = float(sys.argv[6]) if len(sys.argv) > 6 else 0.15
    skip = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in spec.split(",")]
    cfg = BlendConfig(mode="fusionqc", recompute_ratio=ratio)
    suite, embedder = get_suite("hotpotqa"), Embedder()
    pool_examples = load_suite(suite, split, max(pool_n, skip + limit))
    pool_texts = list(dict.fromkeys(c for ex in pool_examples[:pool_n] for c in ex.chunks))
    pool_vecs = embedder.encode(pool_texts)
    print(f"knowledge base: {len(pool_texts)} distinct paragraphs of {pool_n} examples", flush=True)
    rows = []
    with scratch_engine() as engine:
        pool_ids = {}
        for i, ex in enumerate(pool_examples[skip:skip + limit]):
            chunks = list(ex.chunks)
            req, vecs = task_request(engine.prompts, ex), embedder.encode(chunks)
            engine.precompute(chunks)
            row, full = {"id": ex.id, "timed": False, "modes": {}}, None
            for kind, n in variants:
                t0 = time.perf_counter()
                if kind in ("own", "ownplaced"):
                    fused = fuse(req, engine.source.context_ids, vecs, n)
                else:
                    near = pool_neighbours(vecs, chunks, pool_vecs, pool_texts, n)
                    corpus = [[pool_ids.setdefault(j, engine.prompts.chunk_ids(pool_texts[j])) for j in ns]
                              for ns in near]  # token ids, nearest first
                    if kind in ("paper", "placed"):  # fuse places nearest last; reversed, the nearest comes first
                        corpus = [list(reversed(ns)) for ns in corpus]
                    fused = fuse(req, engine.source.context_ids, vecs, n, corpus=corpus)
                if kind == "placed":  # the neighbours' plain entries first, as ingesting the knowledge base would
                    engine.precompute(sorted({pool_texts[j] for ns in near for j in ns}))
                    t0 = time.perf_counter()
                    fused = replace(fused, fused=tuple(put_placed(engine.source, ids, [*reversed(ns)])
                                                       for ids, ns in zip(fused.chunks, corpus, strict=True)))
                    extra = 0
                elif kind == "ownplaced":  # the plain entries are the request's own, already computed
                    placed = [[fused.chunks[j] for j in reversed(ns)] for ns in neighbours(vecs, n)]  # nearest last
                    fused = replace(fused, fused=tuple(put_placed(engine.source, ids, ns)
                                                       for ids, ns in zip(fused.chunks, placed, strict=True)))
                    extra = 0
                else:
                    _, extra, _ = precompute_fused(engine.source, fused.chunks, fused.fused)
                ingest_s = time.perf_counter() - t0  # the neighbours' plain entries (placed) excluded
                label = f"fusionqc_{kind}{n}"
                scored = score_rows(evaluate_request(engine, chunks, req, {label: cfg}, suite.max_new, fused=fused),
                                    ex, suite.score)
                if full is not None and scored["full"]["answer"] != full["answer"]:
                    raise RuntimeError(f"{ex.id}: full prefill answered differently between variants")
                full = scored["full"]
                row["modes"][label] = scored[label]
                row[f"extra_tokens_{kind}{n}"] = extra
                row[f"ingest_s_{kind}{n}"] = ingest_s
                if kind not in ("own", "ownplaced"):
                    own = set(chunks)
                    row[f"in_prompt_{kind}{n}"] = sum(pool_texts[j] in own for ns in near for j in ns) / (n * len(near))
            row["modes"]["full"] = full
            rows.append(row)
            print(i, "  ".join(f"{k}: agree={v['agreement_f1']:.2f} kl={v['tf_kl']:.3f}"
                               for k, v in row["modes"].items() if k != "full"), flush=True)
    result = {"suite": suite.name, "split": split, "skip": skip, "recompute_ratio": ratio, "pool_examples": pool_n,
              "pool_paragraphs": len(pool_texts), "variants": spec, "summary": summary(rows), "rows": rows}
    for key in {k for r in rows for k in r if k.startswith(("extra_tokens_", "in_prompt_", "ingest_s_"))}:
        result["summary"][key] = sum(r[key] for r in rows) / len(rows)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
