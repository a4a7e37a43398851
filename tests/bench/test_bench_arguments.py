"""Counts of zero (or below) are refused by each bench's own parser, before it loads a model or times anything:
`bench kernels --reps 0` once ended in a StatisticsError, `bench memory --limit 0` wrote nothing and exited 0."""

import pytest

from chunkcache.bench import kernels_bench, memory, store_bench, tiers
from chunkcache.cli import main


@pytest.mark.parametrize(("bench_main", "argv", "message"), [
    (memory.main, ["--limit", "0"], "--limit must be >= 1, got 0"),
    (tiers.main, ["--reps", "0"], "--limit and --reps must be >= 1, got 4 and 0"),
    (kernels_bench.main, ["--reps", "0"], "--reps and --tokens must be >= 1, got 0 and None"),
    (kernels_bench.main, ["--tokens", "-8"], "--reps and --tokens must be >= 1, got 5 and -8"),
    (store_bench.main, ["--json", "x.json", "--head-dim", "0"], "--kv-heads, --head-dim, --reps"),
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
