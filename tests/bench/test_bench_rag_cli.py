"""`chunkcache bench rag` end to end on one MuSiQue example with the real model (a smoke run, not a timing)."""

import json
import time

import pytest

from chunkcache.bench.metrics import best_f1, token_f1
from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.bench.dominance import KL_ONLY, dominance
from chunkcache.bench.rag import timed_prefill
from chunkcache.cli import main

KEYS = {"ttft_s_median", "ttft_s_mean", "ttft_speedup_vs_full_median", "tf_top1_agreement", "tf_kl_mean", "f1_mean",
        "fidelity_f1_mean", "first_token_agreement", "recompute_fraction"}


def test_bench_rag_writes_every_figure(tmp_path, smollm):
    out = tmp_path / "rag.json"
    rc = main(["--store", "memory", "bench", "rag", "--data", str(DEFAULT_DATA), "--limit", "1",
               "--modes", "full,naive,cacheblend,adaptive", "--max-new-tokens", "4", "--passages", "3",
               "--repeats", "2", "--no-decode", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    modes = result["modes"]
    assert result["config"]["repeats"] == 2 and result["config"]["decode"] is False and "decode" not in result
    assert set(modes) == {"full", "naive", "cacheblend", "adaptive"}
    for fig in modes.values():
        assert KEYS <= set(fig)
    assert modes["naive"]["recompute_fraction"] == 0.0
    assert 0.149 < modes["cacheblend"]["recompute_fraction"] < 0.151  # round(0.15 * context tokens)
    assert 0 < modes["adaptive"]["recompute_fraction"] < 0.151
    assert modes["naive"]["tf_kl_mean"] > 1e-4  # chunks computed apart: naive reuse is measurably not full prefill
    assert modes["cacheblend"]["tf_kl_mean"] > 0 and modes["cacheblend"]["tf_top1_agreement"] > 0.5


def test_bad_arguments_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "rag", "--recompute-ratio", "1.5"])
    assert exc.value.code == 2 and "recompute ratio must be in [0, 1]" in capsys.readouterr().err
    assert main(["bench", "rag", "--modes", "full,bogus"]) == 2  # refused before the model loads
    assert "mode must be one of" in capsys.readouterr().err
    assert main(["bench", "rag", "--skip", "40"]) == 2  # the bundled dev set has 40 examples
    assert "no example after the first 40" in capsys.readouterr().err
    for flag, value, low in (("--passages", "0", 1), ("--max-new-tokens", "0", 1), ("--repeats", "0", 1),
                             ("--limit", "0", 1), ("--skip", "-1", 0)):  # --passages 0 once meant every passage
        with pytest.raises(SystemExit) as exc:
            main(["bench", "rag", flag, value])
        assert exc.value.code == 2 and f"argument {flag}: must be >= {low}, got {value}" in capsys.readouterr().err


def test_repeated_prefills_report_the_median_time_and_the_last_result():
    class Engine:  # the prefill's timing only: each call sleeps as long as its turn says
        def __init__(self):
            self.calls = []

        def prefill(self, req, cfg, reserve):
            delay = (0.12, 0.01, 0.05)[len(self.calls)]
            self.calls.append((req, cfg, reserve))
            time.sleep(delay)
            return len(self.calls)

    engine = Engine()
    res, t = timed_prefill(engine, "req", "cfg", 7, repeats=3)
    assert res == 3 and engine.calls == [("req", "cfg", 7)] * 3
    assert 0.05 <= t < 0.1  # the median of 0.12, 0.01 and 0.05 s


def test_squad_f1_normalisation():
    assert best_f1("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert token_f1("paris france", "paris") == pytest.approx(2 / 3)
    assert best_f1("", ["x"]) == 0.0


@pytest.mark.slow
def test_bench_rag_cold_and_decode_figures(tmp_path, smollm):
    out = tmp_path / "cold.json"
    assert main(["--store", "memory", "bench", "rag", "--data", str(DEFAULT_DATA), "--limit", "1", "--modes",
                 "full,cacheblend", "--max-new-tokens", "6", "--passages", "2", "--cold", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["decode"] is True and res["decode"]["decode_tokens"] == 6
    assert res["decode_tok_s"] > 0 and res["decode_vs_hf"] > 0
    cold = res["cold"]["cacheblend"]
    assert set(cold) == {"cold_ttft_s", "warm_ttft_s", "full_ttft_s", "chunks_alone_s", "cold_over_warm",
                         "cold_over_full_plus_chunks", "ingest_tok_s", "prefill_tok_s", "ingest_vs_prefill"}
    assert cold["cold_ttft_s"] > cold["warm_ttft_s"] > 0  # a cold request computes every chunk first
    assert abs(cold["cold_over_warm"] - cold["cold_ttft_s"] / cold["warm_ttft_s"]) < 1e-9


def test_bench_rag_pareto_runs_every_mode_at_every_ratio(tmp_path, smollm):
    out, png = tmp_path / "pareto.json", tmp_path / "pareto.png"
    modes, ratios = ["full", "naive", "ape", "cacheblend", "epic", "query", "blend"], [0.1, 1.0]
    rc = main(["--store", "memory", "bench", "rag", "--data", str(DEFAULT_DATA), "--limit", "1",
               "--modes", ",".join(modes), "--ratios", ",".join(map(str, ratios)), "--max-new-tokens", "3",
               "--passages", "3", "--no-decode", "--json", str(out), "--plot", str(png)])
    assert rc == 0 and png.stat().st_size > 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == set(modes)  # the existing keys, at --recompute-ratio
    rows = result["pareto"]
    ratio_free = [m for m in modes if m in ("full", "naive", "ape")]
    assert len(rows) == len(ratio_free) + (len(modes) - len(ratio_free)) * len(ratios)
    by = {(r["mode"], r["ratio"]): r for r in rows}
    assert by[("naive", 0.0)]["recompute_fraction"] == 0.0 and by[("ape", 0.0)]["recompute_fraction"] == 0.0
    for m in ("cacheblend", "query", "blend"):  # every candidate recomputed at ratio 1.0: full prefill again
        assert by[(m, 1.0)]["tf_top1_agreement"] == 1.0 and by[(m, 1.0)]["tf_kl_mean"] < 1e-4
        assert abs(by[(m, 0.1)]["recompute_fraction"] - 0.1) < 0.002  # round(0.1 * context tokens)
    chunk0 = 1.0 - by[("cacheblend", 1.0)]["recompute_fraction"]  # chunk 0 is placed exactly behind the prefix
    assert 0.0 < chunk0 < 0.9
    # epic sweeps k budget-matched: about the ratio's share of the context
    assert 0.0 < by[("epic", 0.1)]["recompute_fraction"] < 0.2
    ex = result["examples"][0]
    assert ex["cacheblend"] == ex["cacheblend@0.1"] or result["config"]["recompute_ratio"] not in ratios


def test_dominance_interpolates_the_default_in_log_speedup():
    row = lambda m, x, kl: {"mode": m, "ratio": 0.1, "ttft_speedup_vs_full_median": x, "tf_kl_mean": kl}  # noqa: E731
    pareto = [row("full", 1.0, 0.0), row("blend", 2.0, 0.04), row("blend", 8.0, 0.08), row("epic", 4.0, 0.1),
              row("query", 10.0, 0.05), row("naive", 1.5, 0.2)]
    got = {r["mode"]: r for r in dominance(pareto, "blend", KL_ONLY)}
    assert set(got) == {"epic", "query", "naive"}
    assert got["epic"]["default_kl"] == pytest.approx(0.06)  # 4x lies half way between 2x and 8x in log
    assert got["epic"]["kl_ratio"] == pytest.approx(0.6) and got["epic"]["met"] is True  # 0.6 <= 0.7
    assert got["query"]["default_kl"] is None and got["naive"]["kl_ratio"] is None  # faster / slower than any
    assert got["query"]["met"] is None
