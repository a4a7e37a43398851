"""Counts of zero (or below) are refused by each bench's own parser, before it loads a model or times anything:
`bench kernels --reps 0` once ended in a StatisticsError, `bench memory --limit 0` wrote nothing and exited 0.
Every count flag takes its type from config/arg_types, so the message names the flag the same way everywhere."""

import argparse

import pytest

from chunkcache.bench import kernels_bench, memory, serve, store_bench, tiers
from chunkcache.cli import main
from chunkcache.config.arg_types import at_least, byte_size, positives


@pytest.mark.parametrize(("bench_main", "argv", "message"), [
    (memory.main, ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    (tiers.main, ["--reps", "0"], "argument --reps: must be >= 1, got 0"),
    (tiers.main, ["--limit", "-2"], "argument --limit: must be >= 1, got -2"),
    (kernels_bench.main, ["--reps", "0"], "argument --reps: must be >= 1, got 0"),
    (kernels_bench.main, ["--tokens", "-8"], "argument --tokens: must be >= 1, got -8"),
    (store_bench.main, ["--json", "x.json", "--head-dim", "0"], "argument --head-dim: must be >= 1, got 0"),
    (store_bench.main, ["--json", "x.json", "--chunks", "two"], "argument --chunks: invalid integer value: 'two'"),
    (serve.main, ["--requests", "0"], "argument --requests: must be >= 1, got 0"),
    (serve.main, ["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (serve.main, ["--clients", "4,0"], "argument --clients: must be >= 1, got 0"),
    (serve.main, ["--cpu-bytes", "0"], "argument --cpu-bytes: must be >= 1 byte, got '0'"),
])
def test_passthrough_benches_refuse_empty_counts(capsys, bench_main, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench_main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--soak", "--ingest-examples"])
def test_bench_api_refuses_negative_counts(capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "api", flag, "-1"])
    assert exc.value.code == 2 and f"argument {flag}: must be >= 0, got -1" in capsys.readouterr().err


def test_argument_types_convert_and_refuse():
    two = at_least(2)
    assert two("2") == 2 and two("17") == 17
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 2, got 1"):
        two("1")
    with pytest.raises(ValueError):
        two("2.5")
    assert positives("1, 4,16") == [1, 4, 16]
    with pytest.raises(argparse.ArgumentTypeError, match="a comma list of positive integers"):
        positives(" , ")
    assert byte_size("512MiB") == 512 * 2**20 and byte_size("1GB") == 10**9
    with pytest.raises(argparse.ArgumentTypeError, match="a byte size such as"):
        byte_size("lots")
