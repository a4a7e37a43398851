"""`chunkcache bench tasks`: every mode against full prefill on a standard suite (chunkcache/bench/tasks/)."""

from __future__ import annotations

import json
from pathlib import Path

from chunkcache.bench.tasks import ruler
from chunkcache.blend.config import MODES
from chunkcache.config.arg_types import non_negative, positive, probability, ratio, ratios


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def cmd_bench_tasks(args) -> int:  # type: ignore[no-untyped-def]
    from chunkcache.bench.rag import write_json
    from chunkcache.bench.tasks.example import check_split, save_examples
    from chunkcache.bench.tasks.hotpotqa import gold_positions
    from chunkcache.bench.tasks.runner import TasksConfig, plot, run_tasks
    from chunkcache.bench.tasks.suites import get_suite, load_suite
    from chunkcache.blend.config import BlendConfig
    from chunkcache.cli.demo import engine_from_args

    if args.merge:
        return merge(args)
    if args.suite is None:
        raise ValueError("--suite: required (or --merge FILE...)")
    suite, split = get_suite(args.suite), check_split(args.split)
    lengths = tuple(int(n) for n in _csv(args.lengths))
    variants = _csv(args.variants)
    ruler.settings(suite.name, lengths, variants)  # checks the variants before the model loads
    base = BlendConfig(recompute_ratio=args.recompute_ratio, decode_correction=args.decode_correction,
                       decode_correction_steps=args.decode_correction_steps, correction_gate=args.correction_gate)
    cfg = TasksConfig(modes=_csv(args.modes), base=base,
                      ratios=tuple(args.ratios or ()), max_new=args.max_new_tokens or suite.max_new,
                      repeats=args.repeats, timed=args.timed, pareto_limit=args.pareto_limit,
                      min_full_score=args.min_full_score, reuse_fused=args.reuse_fused)
    limit = args.limit and args.skip + args.limit
    # a --data file is read and checked before the model loads; generated instances need its tokenizer
    examples = load_suite(suite, split, limit, args.data) if args.data else None
    with engine_from_args(args) as engine:  # closed at the end: its queued store writes land
        prompts = engine.prompts
        reserve = len(prompts.prefix_ids) + len(prompts.encode(prompts.template.suffix_text)) + cfg.max_new + 8
        if examples is None:
            examples = load_suite(suite, split, limit, count=lambda text: len(prompts.encode(text)), reserve=reserve,
                                  lengths=lengths, variants=variants)
        examples = skip_each_setting(examples, args.skip)
        if args.save_data:
            save_examples(examples, args.save_data)
            print(f"wrote {len(examples)} examples to {args.save_data}")
        result = run_tasks(engine, suite, examples, cfg)
        result["split"] = split
        result["data"] = {"n": len(examples), "gold_positions": gold_positions(examples)}
        result["config"] = {"data": args.data, "skip": args.skip, "limit": args.limit, "modes": list(cfg.modes),
                            "recompute_ratio": args.recompute_ratio, "decode_correction": args.decode_correction,
                            "decode_correction_steps": args.decode_correction_steps,
                            "correction_gate": args.correction_gate, "ratios": list(cfg.ratios), "max_new": cfg.max_new,
                            "repeats": cfg.repeats, "timed": cfg.timed, "pareto_limit": cfg.pareto_limit,
                            "min_full_score": cfg.min_full_score, "reuse_fused": cfg.reuse_fused,
                            "lengths": list(lengths), "variants": list(variants),
                            "reserve_tokens": reserve, "device": args.engine.device,
                            "dtype": args.engine.resolved_dtype, "linear_dtype": engine.runner.linear.dtype,
                            "decode_linear_dtype": engine.runner.linear.decode_dtype,
                            "linear": engine.runner.linear.describe(),
                            "attention_bf16": engine.runner.attention_bf16,
                            "attention_precision": engine.runner.attention_precision,
                            "kernels": args.engine.kernels, "attention": engine.runner.attention.summary(),
                            "model": args.engine.model_path or "SmolLM2-135M-Instruct (default)"}
        print(json.dumps({"gate": result.get("gate"), "modes": result["modes"]}, indent=2))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            write_json(result, args.json)
            print(f"wrote {args.json}")
        if args.plot and result["modes"]:
            plot(result, args.plot)
            print(f"wrote plot {args.plot}")
        return 0


def skip_each_setting(examples: list, skip: int) -> list:
    """examples less the first `skip` of each setting (a shard of a run; --merge joins the shards)."""
    seen: dict[str, int] = {}
    out = []
    for ex in examples:
        seen[ex.setting] = seen.get(ex.setting, 0) + 1
        if seen[ex.setting] > skip:
            out.append(ex)
    return out


def merge(args) -> int:  # type: ignore[no-untyped-def]
    from chunkcache.bench.json_file import read_json
    from chunkcache.bench.rag import write_json
    from chunkcache.bench.tasks.runner import merge_results, plot

    result = merge_results([read_json(f) for f in args.merge])
    print(json.dumps({"n": result["data"]["n"], "modes": result["modes"]}, indent=2))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote plot {args.plot}")
    return 0


def register(bench, flags) -> None:  # type: ignore[no-untyped-def]
    """Add `tasks` to the `chunkcache bench` sub-commands (flags: the engine flags' parent parser)."""
    from chunkcache.bench.tasks.example import SPLITS
    from chunkcache.bench.tasks.suites import SUITES

    p = bench.add_parser("tasks", parents=[flags], help="task score, agreement with full prefill, KL and TTFT of "
                         "every mode on a standard suite (HotpotQA, RULER NIAH / VT, MuSiQue)")
    p.add_argument("--suite", default=None, choices=tuple(SUITES), help="required unless --merge")
    p.add_argument("--split", default="dev", choices=SPLITS, help="fixed by seed (bench/tasks/suites.py)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated, from {', '.join(MODES)} (fusion, fusionqc: each example's chunks are "
                        "its corpus)")
    p.add_argument("--recompute-ratio", type=ratio, default=0.15)
    p.add_argument("--ratios", type=ratios, default=None,
                   help="comma list: every mode at each ratio on the Pareto subset (JSON `pareto`)")
    p.add_argument("--decode-correction", type=int, default=0, metavar="K",
                   help="every mode recomputes K prompt tokens per decode step until its cache is full prefill's "
                        "(0: off); the JSON's tpot_ratio_vs_full_median and answer_speedup_vs_full_median say "
                        "what it costs")
    p.add_argument("--decode-correction-steps", type=int, default=0, metavar="S",
                   help="the same correction with K per request, finishing within S decode steps: "
                        "K = ceil(pending prompt tokens / S) (instead of --decode-correction)")
    p.add_argument("--correction-gate", type=probability, default=0.0, metavar="P",
                   help="with a correction: a decode step whose top next-token probability is below P while prompt "
                        "tokens are pending finishes the correction at once (0: off); rows say when it fired")
    p.add_argument("--limit", type=positive, default=None,
                   help="the first N examples of the split (niah, vt: of each setting; default: all, 100 per setting)")
    p.add_argument("--skip", type=non_negative, default=0,
                   help="leave out the first N examples (of each setting): a shard of a longer run, then --merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="join results into one, runs nothing: shards (--skip; same suite, split, modes, ratios) "
                   "by rows, or runs of other modes or ratios on the same examples by columns")
    p.add_argument("--data", default=None, help="the suite's own format instead of the bundled data (see suites.py)")
    p.add_argument("--repeats", type=positive, default=3, help="each timed TTFT is the median of N prefills")
    p.add_argument("--timed", type=int, default=20, help="the first N examples of each setting are timed")
    p.add_argument("--pareto-limit", type=int, default=100, help="the Pareto sweep's examples per setting")
    p.add_argument("--min-full-score", type=float, default=0.8,
                   help="niah, vt: run the modes only on settings where full prefill scores at least this (0: all)")
    p.add_argument("--lengths", default=",".join(str(n) for n in ruler.LENGTHS), help="niah, vt: prompt tokens")
    p.add_argument("--variants", default=",".join(ruler.ISSUE_VARIANTS),
                   help="niah: multikey, multivalue (the issue's), single (RULER's niah_single_2)")
    p.add_argument("--max-new-tokens", type=positive, default=None, help="default: the suite's (suites.py)")
    p.add_argument("--reuse-fused", action="store_true",
                   help="keep the fused entries the store holds (a rerun on the same examples with --store disk: "
                        "fidelity and TTFT only, the fused precompute's cost not measured)")
    p.add_argument("--save-data", default=None, help="also write the examples (niah, vt: their --data format)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="PNG: task score and agreement vs TTFT speedup per mode")
    p.set_defaults(func=cmd_bench_tasks)
