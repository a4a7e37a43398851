"""`chunkcache bench ...`: the commands that run a benchmark of chunkcache/bench/ (`rag`, `api`, `replicas`, and
the pass-through ones whose own parsers take every option after the name)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.blend.config import DEVIATION_ON, MODES, SELECTIONS
from chunkcache.cli.demo import codec_store, engine_from_args
from chunkcache.config.arg_types import non_negative, positive, ratio, ratios


def _bench_rag_extras(args, engine, examples, modes, base, result) -> None:  # type: ignore[no-untyped-def]
    """Decode speed vs HF generate (unless --no-decode) and, with --cold, cold vs warm TTFT and ingestion
    throughput."""
    from chunkcache.bench.coldstart import decode_speed, run_cold

    if args.decode:
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

    examples = load_examples(args.data, args.skip + args.limit)[args.skip:]
    if not examples:
        raise ValueError(f"--skip {args.skip}: {args.data} has no example after the first {args.skip}")
    if args.passages:
        examples = [dict(ex, ctxs=ex["ctxs"][: args.passages]) for ex in examples]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    ratios = args.ratios
    base = BlendConfig(mode="cacheblend", recompute_ratio=args.recompute_ratio, selection=args.selection,
                       deviation_on=args.deviation_on, check_layers=tuple(int(x) for x in args.check_layers.split(",")),
                       epic_k=args.epic_k, sink_tokens=args.sink_tokens, ape_temperature=args.ape_temperature,
                       ape_scale=args.ape_scale)
    for m in modes:
        BlendConfig(mode=m)  # validates the mode name before the model loads
    codec = args.engine.store.disk_codec
    store = codec_store(codec) if codec != "none" else None
    with engine_from_args(args, store) as engine:  # closed at the end: its queued store writes land
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
                            "repeats": args.repeats, "decode": args.decode,
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
    "serve": ("chunkcache.bench.serve",
              "a live server under load: req/s, TTFT and inter-token latency per mode, batching and client count"),
}


def cmd_bench_passthrough(args) -> int:
    """`bench store|kernels|tiers|memory|serve`: their own argument parsers take the remaining arguments."""
    import importlib

    return importlib.import_module(PASSTHROUGH[args.bench][0]).main(args.rest)


def cmd_bench_api(args) -> int:  # type: ignore[no-untyped-def]
    from chunkcache.bench.api import run_api_bench

    result = run_api_bench(args)
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_bench_replicas(args) -> int:  # type: ignore[no-untyped-def]
    from chunkcache.bench.replicas import run_replicas_bench

    out = run_replicas_bench(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def register(bench, flags) -> None:  # type: ignore[no-untyped-def]
    """Add rag, the pass-through benches, api and replicas to the `chunkcache bench` sub-commands.
    flags: the engine flags' parent parser (chunkcache.config.flags.engine_flags)."""
    rag = bench.add_parser("rag", help="TTFT and fidelity of each mode vs full prefill on MuSiQue "
                           "(--kv-codec int8: chunk KV read back through the int8 codec)", parents=[flags])
    rag.add_argument("--data", default=str(DEFAULT_DATA))
    rag.add_argument("--limit", type=positive, default=8)
    rag.add_argument("--skip", type=non_negative, default=0, help="start after the first N examples of --data")
    rag.add_argument("--modes", default=",".join(MODES),
                     help=f"comma-separated, from {', '.join(MODES)} (fusion, fusionqc: each example's "
                          "passages are its corpus; their fused entries are precomputed before timing)")
    rag.add_argument("--recompute-ratio", type=ratio, default=0.15)
    rag.add_argument("--max-new-tokens", type=positive, default=32)
    rag.add_argument("--repeats", type=positive, default=1,
                     help="each TTFT (full included) is the median of N prefills")
    rag.add_argument("--passages", type=positive, default=None,
                     help="keep only the first N passages of each example")
    rag.add_argument("--sweep", action="store_true", help="fidelity and TTFT vs recompute ratio, with a PNG plot")
    rag.add_argument("--profile", action="store_true",
                     help="also profile one prefill per mode on the first example (self CPU time per op group)")
    rag.add_argument("--ratios", type=ratios, default=None,
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
    rag.add_argument("--no-decode", dest="decode", action="store_false",
                     help="skip the decode speed against HF generate (two more prefills and decodes of the first "
                          "example)")
    rag.set_defaults(func=cmd_bench_rag)
    for name, (_, text) in PASSTHROUGH.items():
        b = bench.add_parser(name, help=text, add_help=False)
        b.add_argument("rest", nargs=argparse.REMAINDER, help=f"arguments of `chunkcache bench {name}` (see --help)")
        b.set_defaults(func=cmd_bench_passthrough)

    api = bench.add_parser("api", help="HTTP overhead, 50-request burst, MuSiQue ingestion rate")
    api.add_argument("--data", default=str(DEFAULT_DATA))
    api.add_argument("--requests", type=positive, default=50, help="sequential requests for the overhead")
    api.add_argument("--burst", type=positive, default=50)
    api.add_argument("--max-queue", type=positive, default=16)
    api.add_argument("--soak", type=non_negative, default=1000, help="sequential requests with fresh chunks (0 skips)")
    api.add_argument("--soak-cpu-bytes", type=positive, default=256 << 20, help="the server's CPU-tier budget")
    api.add_argument("--ingest-examples", type=non_negative, default=40, help="0 skips the ingestion figure")
    api.add_argument("--json", default=None)
    api.set_defaults(func=cmd_bench_api)

    rep = bench.add_parser("replicas", help="warm TTFT with chunk KV from the shared Redis tier vs the local "
                                            "CPU tier, for N = 1 and 2 replicas")
    rep.add_argument("--data", default=str(DEFAULT_DATA))
    rep.add_argument("--examples", type=positive, default=3)
    rep.add_argument("--passages", type=positive, default=3, help="passages (chunks) per example")
    rep.add_argument("--redis-url", default=None, help="default: a private redis-server on a free port")
    rep.add_argument("--json", default=None)
    rep.set_defaults(func=cmd_bench_replicas)
