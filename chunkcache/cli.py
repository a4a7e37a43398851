"""`chunkcache` command line: the demo (main job) and the benchmarks."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from chunkcache.api.cli import register as register_api
from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.blend.config import DEFAULT_MODE, DEVIATION_ON, MODES, SELECTIONS
from chunkcache.config import ConfigError, EngineConfig, check_config
from chunkcache.config.flags import config_from_args, engine_flags


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"recompute ratio must be in [0, 1], got {value}")
    return value


def _ratios(text: str) -> list[float]:
    return [_ratio(r) for r in text.split(",") if r.strip()]


def _engine(args, store=None):  # type: ignore[no-untyped-def]
    from chunkcache.blend.engine import ChunkCacheEngine

    return ChunkCacheEngine.from_config(args.engine, store=store)


def _codec_store(codec: str):  # type: ignore[no-untyped-def]
    """A disk-only store in a temp dir whose entries pass through `codec` (every read decodes from disk)."""
    import tempfile

    from chunkcache.store.chunk_store import ChunkStore
    from chunkcache.store.config import StoreConfig, TierConfig

    root = tempfile.mkdtemp(prefix=f"chunkcache-{codec}-")
    return ChunkStore(StoreConfig(tiers=(TierConfig("disk", codec=codec),), cache_dir=root, promote_on_hit=False))


def cmd_demo(args) -> int:
    """RAG answer over a bundled sample: full prefill vs blended, with reuse stats."""
    import time

    from chunkcache.bench.musique import load_examples, passage_text
    from chunkcache.blend.config import BlendConfig

    t0 = time.perf_counter()
    engine = _engine(args)
    print(f"model loaded in {time.perf_counter() - t0:.1f}s (fingerprint {engine.runner.fingerprint})")
    att = engine.runner.attention
    print(f"{att.describe()} [{att.source}{f' in {att.startup_s:.1f}s' if att.source == 'measured' else ''}]")
    ex = load_examples(args.data, limit=args.example + 1)[args.example]
    chunks = [passage_text(c) for c in ex["ctxs"]]
    t0 = time.perf_counter()
    engine.precompute(chunks)
    precompute_s = time.perf_counter() - t0
    print(f"precomputed KV of {len(chunks)} chunks in {precompute_s:.1f}s")
    print(f"question: {ex['question']}\ngold answers: {ex['answers']}")
    full = engine.answer(chunks, ex["question"], BlendConfig(mode="full"))
    blend = engine.answer(chunks, ex["question"], BlendConfig(mode=args.mode, recompute_ratio=args.recompute_ratio))
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
            "precompute_s": precompute_s, "mode": args.mode, "recompute_ratio": args.recompute_ratio,
            "stats": s, "full_stats": full.stats, "attention": att.summary(), "kernels": args.engine.kernels,
            "answers": {"full": full.text, "blend": blend.text}}, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def _bench_rag_extras(args, engine, examples, modes, base, result) -> None:  # type: ignore[no-untyped-def]
    """Decode speed vs HF generate (always) and, with --cold, cold vs warm TTFT and ingestion throughput."""
    from chunkcache.bench.coldstart import decode_speed, run_cold

    result["decode"] = decode_speed(engine, examples[0], args.max_new_tokens)
    result["decode_tok_s"] = result["decode"]["decode_tok_s"]
    result["decode_vs_hf"] = result["decode"]["decode_vs_hf"]
    print(f"decode: {result['decode_tok_s']:.1f} tok/s, {result['decode_vs_hf']:.2f}x HF generate")
    if args.cold:
        result["cold"] = run_cold(engine, examples, base, modes)
        print(json.dumps({"cold": result["cold"]}, indent=2))


def cmd_bench_rag(args) -> int:
    from dataclasses import replace

    from chunkcache.bench.musique import load_examples
    from chunkcache.bench.rag import plot_pareto, plot_sweep, run_rag, run_sweep, write_json
    from chunkcache.blend.config import BlendConfig

    if args.skip < 0 or args.limit < 1:
        raise ValueError("--skip must be >= 0 and --limit >= 1")
    examples = load_examples(args.data, args.skip + args.limit)[args.skip:]
    if not examples:
        raise ValueError(f"--skip {args.skip}: {args.data} has no example after the first {args.skip}")
    if args.passages:
        examples = [dict(ex, ctxs=ex["ctxs"][: args.passages]) for ex in examples]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    ratios = args.ratios
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    base = BlendConfig(mode="cacheblend", recompute_ratio=args.recompute_ratio, selection=args.selection,
                       deviation_on=args.deviation_on, check_layers=tuple(int(x) for x in args.check_layers.split(",")),
                       epic_k=args.epic_k, sink_tokens=args.sink_tokens, ape_temperature=args.ape_temperature,
                       ape_scale=args.ape_scale)
    for m in modes:
        BlendConfig(mode=m)  # validates the mode name before the model loads
    codec = args.engine.store.disk_codec
    engine = _engine(args, _codec_store(codec) if codec != "none" else None)
    if args.sweep:
        result = run_sweep(engine, examples, [0.0, 0.05, 0.1, 0.15, 0.3, 0.5, 1.0], base, args.max_new_tokens)
        png = str(Path(args.json).with_suffix(".png")) if args.json else "sweep.png"
        plot_sweep(result, png)
        print(f"wrote plot {png}")
    else:
        result = run_rag(engine, examples, modes, base, args.max_new_tokens, ratios=ratios, repeats=args.repeats)
        if ratios and args.plot:
            plot_pareto(result["pareto"], args.plot)
            print(f"wrote plot {args.plot}")
        _bench_rag_extras(args, engine, examples, modes, base, result)
    if args.profile:
        from chunkcache.bench.profile import format_profile, profile_prefill

        result["profile"] = [profile_prefill(engine, examples[0], replace(base, mode=m)) for m in modes]
        for p in result["profile"]:
            print(format_profile(p))
    result["config"] = {"data": str(args.data), "skip": args.skip, "limit": args.limit,
                        "recompute_ratio": args.recompute_ratio,
                        "ratios": ratios, "selection": args.selection, "deviation_on": args.deviation_on,
                        "check_layers": list(base.check_layers), "epic_k": args.epic_k,
                        "sink_tokens": args.sink_tokens, "ape_temperature": args.ape_temperature,
                        "ape_scale": args.ape_scale, "kv_codec": codec, "passages": args.passages,
                        "repeats": args.repeats,
                        "device": args.engine.device, "dtype": args.engine.resolved_dtype,
                        "kernels": args.engine.kernels, "attention": engine.runner.attention.summary(),
                        "model": args.engine.model_path or "SmolLM2-135M-Instruct (default)"}
    print(json.dumps(result["modes"], indent=2))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


PASSTHROUGH = {  # bench name -> (module whose main(argv) parses its own options, help)
    "store": ("chunkcache.bench.store_bench",
              "store tiers: bandwidth vs copy/dd, put, Redis, eviction, compression, streaming"),
    "kernels": ("chunkcache.bench.kernels_bench",
                "Triton kernels vs torch references and SDPA (GPU figures need CUDA)"),
    "tiers": ("chunkcache.bench.tiers",
              "cacheblend TTFT with chunks on the disk tier (pipelined / whole) vs the CPU tier"),
    "memory": ("chunkcache.bench.memory",
               "peak memory a request adds, blended vs full prefill (one subprocess per run)"),
}


def cmd_bench_passthrough(args) -> int:
    """`bench store|kernels|tiers|memory`: their own argument parsers take the remaining arguments."""
    import importlib

    return importlib.import_module(PASSTHROUGH[args.bench][0]).main(args.rest)


def _passthrough(global_argv: list[str], name: str, rest: list[str]) -> int:
    """`chunkcache [--threads N] bench <name> ...`: of the engine flags only --threads applies there."""
    given = {k: v for k, v in vars(build_parser().parse_args(global_argv)).items()
             if v is not None and k not in ("command", "verbose")}
    if set(given) - {"threads"}:
        print(f"chunkcache: error: `bench {name}` takes its own options after its name; of the engine flags only "
              f"--threads applies before it (got {', '.join(sorted(set(given) - {'threads'}))})", file=sys.stderr)
        return 2
    if "threads" in given:
        import torch
        from pydantic import ValidationError

        try:
            threads = EngineConfig(threads=given["threads"]).threads  # the engine's own check of the value
        except ValidationError:
            print(f"chunkcache: error: --threads must be a positive integer, got {given['threads']!r}", file=sys.stderr)
            return 2
        torch.set_num_threads(threads)
    return cmd_bench_passthrough(argparse.Namespace(bench=name, rest=rest))


def build_parser() -> argparse.ArgumentParser:
    flags = engine_flags()
    p = argparse.ArgumentParser(prog="chunkcache", description=__doc__, parents=[flags])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="RAG answer on a sample: full prefill vs blended", parents=[flags])
    demo.add_argument("--data", default=str(DEFAULT_DATA))
    demo.add_argument("--example", type=int, default=0)
    demo.add_argument("--mode", default=DEFAULT_MODE, choices=MODES)
    demo.add_argument("--recompute-ratio", type=_ratio, default=0.15)
    demo.add_argument("--json", default=None, help="also write the figures, stats and attention dispatch here")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks", parents=[flags]).add_subparsers(dest="bench", required=True)
    rag = bench.add_parser("rag", help="TTFT and fidelity of each mode vs full prefill on MuSiQue "
                           "(--kv-codec int8: chunk KV read back through the int8 codec)", parents=[flags])
    rag.add_argument("--data", default=str(DEFAULT_DATA))
    rag.add_argument("--limit", type=int, default=8)
    rag.add_argument("--skip", type=int, default=0, help="start after the first N examples of --data")
    rag.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    rag.add_argument("--recompute-ratio", type=_ratio, default=0.15)
    rag.add_argument("--max-new-tokens", type=int, default=32)
    rag.add_argument("--repeats", type=int, default=1, help="each TTFT (full included) is the median of N prefills")
    rag.add_argument("--passages", type=int, default=None, help="keep only the first N passages of each example")
    rag.add_argument("--sweep", action="store_true", help="fidelity and TTFT vs recompute ratio, with a PNG plot")
    rag.add_argument("--profile", action="store_true",
                     help="also profile one prefill per mode on the first example (self CPU time per op group)")
    rag.add_argument("--ratios", type=_ratios, default=None,
                     help="comma list: also run every mode at each ratio (JSON `pareto`; ratio-free modes once)")
    rag.add_argument("--plot", default=None, help="with --ratios: PNG of KL and top-1 vs TTFT speedup per mode")
    rag.add_argument("--selection", choices=SELECTIONS, default="deviation", help="cacheblend/adaptive token score")
    rag.add_argument("--deviation-on", choices=DEVIATION_ON, default="kv")
    rag.add_argument("--check-layers", default="1", help="comma list of check layers (gradual filtering)")
    rag.add_argument("--epic-k", type=int, default=16, help="epic: first k tokens of every chunk recomputed")
    rag.add_argument("--sink-tokens", type=int, default=4,
                     help="kvcomm+epic / kvcomm+blend: tokens recomputed at the start of each anchor-placed segment")
    rag.add_argument("--ape-temperature", type=float, default=0.9)
    rag.add_argument("--ape-scale", type=float, default=0.9)
    rag.add_argument("--json", default=None)
    rag.add_argument("--cold", action="store_true", help="also TTFT with every chunk missing vs warm and vs full "
                     "prefill + computing the chunks alone, and ingestion vs prefill tokens/s")
    rag.set_defaults(func=cmd_bench_rag)
    for name, (_, text) in PASSTHROUGH.items():
        b = bench.add_parser(name, help=text, add_help=False)
        b.add_argument("rest", nargs=argparse.REMAINDER, help=f"arguments of `chunkcache bench {name}` (see --help)")
        b.set_defaults(func=cmd_bench_passthrough)
    register_api(sub, bench, flags)
    __import__("chunkcache.bench.agents", fromlist=["register"]).register(bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    i = argv.index("bench") if "bench" in argv else -1
    if 0 <= i < len(argv) - 1 and argv[i + 1] in PASSTHROUGH:  # their parsers own every option after the name
        return _passthrough(argv[:i], argv[i + 1], argv[i + 2:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.command is None:
        args = build_parser().parse_args(["demo", *argv])
    try:
        args.engine = check_config(config_from_args(args))  # before any model loads
    except ConfigError as err:
        print(f"chunkcache: config error: {err}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"chunkcache: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
