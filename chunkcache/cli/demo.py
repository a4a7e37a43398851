"""`chunkcache demo`: a RAG answer over a bundled sample, full prefill vs blended, with reuse stats."""

from __future__ import annotations

import json
from pathlib import Path

from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.blend.config import DEFAULT_MODE, FUSED_MODES, MODES
from chunkcache.config.arg_types import positive, ratio


def engine_from_args(args, store=None):  # type: ignore[no-untyped-def]
    from chunkcache.blend.engine import ChunkCacheEngine

    return ChunkCacheEngine.from_config(args.engine, store=store)


def codec_store(codec: str):  # type: ignore[no-untyped-def]
    """A disk-only store in a temp dir whose entries pass through `codec` (every read decodes from disk); the
    directory is removed with the store (when it is collected, or at exit)."""
    import shutil
    import tempfile
    import weakref

    from chunkcache.store.chunk_store import ChunkStore
    from chunkcache.store.config import StoreConfig, TierConfig

    root = tempfile.mkdtemp(prefix=f"chunkcache-{codec}-")
    store = ChunkStore(StoreConfig(tiers=(TierConfig("disk", codec=codec),), cache_dir=root, promote_on_hit=False))
    weakref.finalize(store, shutil.rmtree, root, True)
    return store


def cmd_demo(args) -> int:
    """RAG answer over a bundled sample: full prefill vs blended, with reuse stats. The store is closed at the
    end, so a second run finds every entry (plain and fused) that this one computed."""
    import time

    from chunkcache.bench.musique import load_examples

    examples = load_examples(args.data)  # read and checked before the model loads
    if not 0 <= args.example < len(examples):
        raise ValueError(f"--example {args.example}: {args.data} holds {len(examples)} examples "
                         f"(0 to {len(examples) - 1})")
    t0 = time.perf_counter()
    with engine_from_args(args) as engine:
        print(f"model loaded in {time.perf_counter() - t0:.1f}s (fingerprint {engine.runner.fingerprint})")
        return _demo(engine, args, examples[args.example])


def _demo(engine, args, ex: dict) -> int:  # type: ignore[no-untyped-def]
    import time

    from chunkcache.bench.musique import passage_text
    from chunkcache.blend.config import BlendConfig
    from chunkcache.runner.decode import SamplingConfig

    att = engine.runner.attention
    print(f"{att.describe()} [{att.source}{f' in {att.startup_s:.1f}s' if att.source == 'measured' else ''}]")
    if engine.runner.linear.asked:
        print(engine.runner.linear.describe())
    if args.engine.attention_dtype:
        print(engine.runner.attention_precision)
    chunks = [passage_text(c) for c in ex["ctxs"]]
    t0 = time.perf_counter()
    engine.precompute(chunks)
    precompute_s = time.perf_counter() - t0
    print(f"precomputed KV of {len(chunks)} chunks in {precompute_s:.1f}s")
    req, fusion = engine.prompts.request(chunks, ex["question"]), {}
    if args.mode in FUSED_MODES:  # the example's passages as the corpus: each one's fused entry, precomputed
        from chunkcache.bench.rag import fused_request
        from chunkcache.retrieval.embedder import Embedder

        req, fusion = fused_request(engine, req, Embedder().encode(chunks), reuse=True)
        print(f"fused entries (each chunk behind its 2 nearest): {len(chunks) - fusion['fused_computed']} found, "
              f"{fusion['fused_computed']} precomputed in {fusion['fusion_precompute_s']:.1f}s "
              f"({fusion['fusion_extra_tokens']} tokens beyond the {fusion['plain_tokens']} plain ones); "
              f"their anchors (what fusionqc's selection reads) in {fusion['anchors_s']:.2f}s")
    print(f"question: {ex['question']}\ngold answers: {ex['answers']}")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    full = engine.generate(req, BlendConfig(mode="full"), sampling)
    blend = engine.generate(req, BlendConfig(mode=args.mode, recompute_ratio=args.recompute_ratio), sampling)
    print(f"full prefill : {full.ttft_s:6.2f}s TTFT  answer: {full.text!r}")
    print(f"{args.mode:<13}: {blend.ttft_s:6.2f}s TTFT  answer: {blend.text!r}")
    s = blend.stats
    print(f"speedup {full.ttft_s / blend.ttft_s:.2f}x; reused {s['reused_tokens']}/{s['prompt_tokens']} prompt tokens, "
          f"recomputed {s['recomputed_tokens']} of {s['context_tokens']} context tokens "
          f"({100 * s['recompute_fraction']:.1f}%); chunk hits {s['chunk_hits']}, misses {s['chunk_misses']}; "
          f"attention {s['attention']}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "speedup": full.ttft_s / blend.ttft_s, "full_ttft_s": full.ttft_s, "blend_ttft_s": blend.ttft_s,
            "precompute_s": precompute_s, **fusion, "mode": args.mode, "recompute_ratio": args.recompute_ratio,
            "stats": s, "full_stats": full.stats, "attention": att.summary(), "kernels": args.engine.kernels,
            "answers": {"full": full.text, "blend": blend.text},
            "new_tokens": {"full": len(full.token_ids), "blend": len(blend.token_ids)}}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def register(sub, flags) -> None:  # type: ignore[no-untyped-def]
    """Add `demo` to the `chunkcache` sub-commands (flags: the engine flags' parent parser)."""
    demo = sub.add_parser("demo", help="RAG answer on a sample: full prefill vs blended", parents=[flags])
    demo.add_argument("--data", default=str(DEFAULT_DATA))
    demo.add_argument("--example", type=int, default=0)
    demo.add_argument("--mode", default=DEFAULT_MODE, choices=MODES)
    demo.add_argument("--recompute-ratio", type=ratio, default=0.15)
    demo.add_argument("--max-new-tokens", type=positive, default=32, help="answer length in tokens (default 32)")
    demo.add_argument("--json", default=None, help="also write the figures, stats and attention dispatch here")
    demo.set_defaults(func=cmd_demo)
