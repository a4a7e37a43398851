"""`chunkcache` command line: the demo (the default command), the serving commands and the benchmarks."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from chunkcache.cli import bench as bench_cli
from chunkcache.cli import calibrate as calibrate_cli
from chunkcache.cli import demo, serve, tasks
from chunkcache.cli.bench import PASSTHROUGH, cmd_bench_passthrough
from chunkcache.config import ConfigError, EngineConfig, check_config
from chunkcache.config.flags import config_from_args, engine_flags
from chunkcache.config.loading import explain


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

    demo.register(sub, flags)
    bench = sub.add_parser("bench", help="benchmarks", parents=[flags]).add_subparsers(dest="bench", required=True)
    bench_cli.register(bench, flags)
    tasks.register(bench, flags)
    __import__("chunkcache.bench.agents", fromlist=["register"]).register(bench)
    serve.register(sub, flags)
    calibrate_cli.register(sub, flags)
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
    except ValidationError as err:  # request options (GenerationOptions): one line naming each field
        print(f"chunkcache: error: {explain(err)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"chunkcache: error: {err}", file=sys.stderr)
        return 2
