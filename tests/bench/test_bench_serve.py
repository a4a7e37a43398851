"""`chunkcache bench serve`: the request sequence, percentiles, windows and targets with values; one small live run
against real `chunkcache serve` subprocesses (the real model) over short MuSiQue-format passages."""

import json
import statistics

import pytest

from chunkcache.bench.serve import Setting, main, settings, parser, server_flags
from chunkcache.bench.serve_load import (Sample, build_requests, passage_pool, paired_speedup, percentile, summarize,
                                         targets, windows, zipf_weights)

POOL = [f"passage {i}" for i in range(20)]


def test_request_sequence_is_fixed_by_the_seed_and_zipf_skewed():
    a = build_requests(POOL, ["q1", "q2"], 400, 3, 1.1, seed=7)
    assert a == build_requests(POOL, ["q1", "q2"], 400, 3, 1.1, seed=7)
    assert a != build_requests(POOL, ["q1", "q2"], 400, 3, 1.1, seed=8)
    for r in a:
        assert len(set(r.passages)) == 3 and r.chunks == tuple(POOL[i] for i in r.passages) and r.query in ("q1", "q2")
    counts = sorted((sum(i in r.passages for r in a) for i in range(len(POOL))), reverse=True)
    assert counts[0] > 3 * counts[-1]  # Zipf: the top passage far more often than the last
    assert any(list(r.passages) != sorted(r.passages) for r in a)  # shuffled order, not pool order
    uniform = build_requests(POOL, ["q"], 2000, 1, 0.0, seed=1)
    assert max(sum(r.passages[0] == i for r in uniform) for i in range(20)) < 2 * 2000 / 20


def test_zipf_weights_and_bad_sequence_arguments():
    assert zipf_weights(3, 1.0) == [1.0, 0.5, 1 / 3]
    assert zipf_weights(2, 0.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match="--passages must be in"):
        build_requests(POOL, ["q"], 5, 21, 1.1, 0)
    with pytest.raises(ValueError, match="zipf needs"):
        zipf_weights(0, 1.1)


def test_passage_pool_keeps_distinct_passages_in_order():
    ex = [{"ctxs": [{"title": "A", "text": "x"}, {"title": "B", "text": "y"}]},
          {"ctxs": [{"title": "B", "text": "y"}, {"title": "C", "text": "z"}]}]
    assert passage_pool(ex) == ["A\nx\n\n", "B\ny\n\n", "C\nz\n\n"]
    assert passage_pool(ex, 2) == ["A\nx\n\n", "B\ny\n\n"]


def test_percentile_interpolates_between_ranks():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) is None
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        percentile(values, 100)


def _run(ttfts: list[float], gap: float = 1.0, stats: dict | None = None) -> list[Sample]:
    """Sequential requests, each `gap` seconds long, first token after ttft_i, one token gap of 0.1 s."""
    return [Sample(i, i * gap, i * gap + t, (i + 1) * gap, [0.1], dict(stats or {})) for i, t in enumerate(ttfts)]


def test_summary_counts_throughput_latency_and_hits():
    stats = {"prompt_tokens": 100, "reused_tokens": 80, "chunk_hits": 3, "chunk_misses": 1, "generated_tokens": 2}
    row = summarize(_run([0.2, 0.4, 0.6, 0.8], stats=stats), wall_s=4.0)
    assert row["n"] == 4 and row["req_per_s"] == 1.0 and row["out_tok_per_s"] == 2.0
    assert row["hit_rate"] == 0.8 and row["chunk_hit_rate"] == 0.75
    assert row["ttft_p50_s"] == pytest.approx(0.5) and row["itl_p99_s"] == pytest.approx(0.1)


def test_windows_pair_speedups_per_request_index():
    full = _run([1.0] * 6, gap=2.0)
    blend = _run([0.5, 0.25, 0.5, 1.0, 0.5, 0.5], gap=1.0)
    win = windows(blend, full, 3)
    assert [(w["start"], w["end"], w["n"]) for w in win] == [(0, 3, 3), (3, 6, 3)]
    assert win[0]["ttft_speedup_vs_full"] == 2.0 and win[1]["ttft_speedup_vs_full"] == 2.0  # medians of 2,4,2 / 1,2,2
    assert win[0]["throughput_vs_full"] == pytest.approx(2.0)  # 3 requests in 3 s vs in 6 s
    assert windows(blend, None, 4)[1]["ttft_speedup_vs_full"] is None and len(windows(blend, None, 4)) == 2
    assert paired_speedup(blend, full, 1, 3) == pytest.approx(statistics.median([4.0, 2.0]))


def _row(mode, batching, clients, rps, p99):
    return {"mode": mode, "batching": batching, "clients": clients, "req_per_s": rps, "ttft_p99_s": p99}


def test_targets_have_values_margins_and_the_steady_state():
    rows = [_row("blend", True, 16, 3.3, 1.0), _row("blend", False, 16, 1.0, 9.0), _row("full", True, 16, 1.2, 2.0)]
    n = 600
    blend = _run([0.5] * 100 + [0.25] * (n - 100))
    full = _run([1.0] * n)
    t = targets(rows, {("blend", True, 16): blend, ("full", True, 16): full})
    assert t["clients"] == 16
    assert t["batching_vs_one_at_a_time"]["value"] == pytest.approx(3.3) and t["batching_vs_one_at_a_time"]["met"]
    assert t["batching_vs_one_at_a_time"]["margin"] == pytest.approx(0.1)
    assert t["vs_full"]["value"] == pytest.approx(2.75) and t["vs_full"]["met"] is False
    assert t["vs_full"]["p99_ttft_no_worse"] is True
    s = t["steady_state"]
    assert (s["early_speedup"], s["late_speedup"], s["met"], s["within_10pct"]) == (2.0, 4.0, True, False)
    collapsed = targets(rows, {("blend", True, 16): _run([0.5] * 500 + [0.9] * 100), ("full", True, 16): full})
    assert collapsed["steady_state"]["met"] is False and collapsed["steady_state"]["value"] == pytest.approx(1 / 1.8)
    short = targets(rows[:1], {})
    assert short["vs_full"]["met"] is None and short["steady_state"]["met"] is None


def test_settings_and_server_flags():
    args = parser().parse_args(["--clients", "1,4", "--modes", "blend,full"])
    assert settings(args) == [Setting("blend", False, 1), Setting("blend", False, 4), Setting("blend", True, 1),
                              Setting("blend", True, 4), Setting("full", True, 1), Setting("full", True, 4)]
    assert settings(parser().parse_args(["--no-batching", "--clients", "16"])) == [Setting("blend", False, 16)]
    flags = server_flags(args, Setting("blend", True, 4), batching_flag=True)
    assert flags[flags.index("--max-batch") + 1] == "4" and flags[flags.index("--cpu-bytes") + 1] == str(512 * 2**20)
    flags = server_flags(args, Setting("blend", False, 4), batching_flag=True)
    assert flags[flags.index("--max-batch") + 1] == "1"
    assert "--max-batch" not in server_flags(args, Setting("blend", True, 4), batching_flag=False)
    for bad in (["--modes", "naive"], ["--clients", "0"], ["--cpu-bytes", "lots"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)


def test_cli_refuses_bad_settings_before_any_server_starts(capsys):
    from chunkcache.cli import main as cli_main

    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "serve", "--modes", "blend,naive"])
    assert exc.value.code == 2 and "--modes: each must be one of" in capsys.readouterr().err
    assert cli_main(["bench", "serve", "--passages", "400"]) == 2  # the bundled pool has 378 passages
    assert "--passages must be in [1, 378]" in capsys.readouterr().err


@pytest.mark.slow
def test_live_run_reports_consistent_rows(tmp_path):
    words = "The {} river flows through the valley of {} and its delta feeds the wetlands near the old port of {}."
    data = [{"question": f"Which river flows near port {i}?", "answers": ["x"],
             "ctxs": [{"title": f"River {i}-{j}", "text": words.format(f"R{i}{j}", f"V{i}{j}", f"P{i}{j}")}
                      for j in range(3)]} for i in range(2)]
    (tmp_path / "data.json").write_text(json.dumps(data))
    out = tmp_path / "serve.json"
    assert main(["--data", str(tmp_path / "data.json"), "--requests", "6", "--clients", "2", "--modes", "blend,full",
                 "--passages", "2", "--max-tokens", "3", "--window", "3", "--cpu-bytes", "4MiB",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["pool"] == 6 and result["command"].startswith("chunkcache bench serve --data")
    runs = {(r["mode"], r["batching"]): r for r in result["runs"]}
    assert set(runs) == {("blend", False), ("blend", True), ("full", True)}
    for r in runs.values():
        assert r["n"] == 6 and r["errors"] == 0 and r["clients"] == 2 and r["req_per_s"] > 0
        assert 0 < r["out_tok_per_s"] <= 3 * r["req_per_s"] + 1e-9
        assert 0 < r["ttft_p50_s"] <= r["ttft_p90_s"] <= r["ttft_p99_s"] and 0 < r["itl_p50_s"] <= r["itl_p99_s"]
        assert 0 <= r["hit_rate"] <= 1 and 0 <= r["chunk_hit_rate"] <= 1
        assert [w["n"] for w in r["windows"]] == [3, 3] and all(w["ttft_speedup_vs_full"] > 0 for w in r["windows"])
    assert runs["full", True]["hit_rate"] == 0 and runs["full", True]["windows"][0]["ttft_speedup_vs_full"] == 1.0
    assert runs["blend", True]["chunk_hit_rate"] > 0 and runs["blend", True]["hit_rate"] > 0
    assert runs["blend", True]["working_set_exceeds_cpu_tier"]  # 4 MiB holds fewer than the six passages' KV
    assert result["targets"]["clients"] == 2 and result["targets"]["steady_state"]["met"] is None
    assert result["targets"]["vs_full"]["value"] == pytest.approx(runs["blend", True]["req_per_s"]
                                                                  / runs["full", True]["req_per_s"])
