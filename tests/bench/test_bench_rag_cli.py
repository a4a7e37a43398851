"""`chunkcache bench rag` end to end on one MuSiQue example with the real model (a smoke run, not a timing)."""

import json

import pytest

from chunkcache.bench.metrics import best_f1, token_f1
from chunkcache.cli import SAMPLE_DATA, main

KEYS = {"ttft_s_median", "ttft_s_mean", "ttft_speedup_vs_full_median", "tf_top1_agreement", "tf_kl_mean", "f1_mean",
        "fidelity_f1_mean", "first_token_agreement", "recompute_fraction"}


def test_bench_rag_writes_every_figure(tmp_path, smollm):
    out = tmp_path / "rag.json"
    rc = main(["--store", "memory", "bench", "rag", "--data", str(SAMPLE_DATA), "--limit", "1",
               "--modes", "full,naive,cacheblend,adaptive", "--max-new-tokens", "4", "--passages", "6",
               "--json", str(out)])
    assert rc == 0
    modes = json.loads(out.read_text())["modes"]
    assert set(modes) == {"full", "naive", "cacheblend", "adaptive"}
    for fig in modes.values():
        assert KEYS <= set(fig)
    assert modes["full"]["tf_top1_agreement"] == 1.0 and modes["full"]["tf_kl_mean"] == 0.0
    assert modes["naive"]["recompute_fraction"] == 0.0
    assert 0.149 < modes["cacheblend"]["recompute_fraction"] < 0.151  # round(0.15 * context tokens)
    assert 0 < modes["adaptive"]["recompute_fraction"] < 0.151
    assert 0.0 <= modes["cacheblend"]["tf_top1_agreement"] <= 1.0 and modes["cacheblend"]["tf_kl_mean"] >= 0.0


def test_bad_arguments_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "rag", "--recompute-ratio", "1.5"])
    assert exc.value.code == 2 and "recompute ratio must be in [0, 1]" in capsys.readouterr().err
    assert main(["bench", "rag", "--modes", "full,bogus"]) == 2  # refused before the model loads
    assert "mode must be one of" in capsys.readouterr().err


def test_squad_f1_normalisation():
    assert best_f1("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert token_f1("paris france", "paris") == pytest.approx(2 / 3)
    assert best_f1("", ["x"]) == 0.0


def test_bench_rag_pareto_runs_every_mode_at_every_ratio(tmp_path, smollm):
    out, png = tmp_path / "pareto.json", tmp_path / "pareto.png"
    modes, ratios = ["full", "naive", "ape", "cacheblend", "epic", "query", "blend"], [0.1, 1.0]
    rc = main(["--store", "memory", "bench", "rag", "--data", str(SAMPLE_DATA), "--limit", "1",
               "--modes", ",".join(modes), "--ratios", ",".join(map(str, ratios)), "--max-new-tokens", "3",
               "--passages", "3", "--json", str(out), "--plot", str(png)])
    assert rc == 0 and png.stat().st_size > 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == set(modes)  # the existing keys, at --recompute-ratio
    rows = result["pareto"]
    ratio_free = [m for m in modes if m in ("full", "naive", "ape")]
    assert len(rows) == len(ratio_free) + (len(modes) - len(ratio_free)) * len(ratios)
    by = {(r["mode"], r["ratio"]): r for r in rows}
    assert by[("full", 1.0)]["tf_top1_agreement"] == 1.0 and by[("full", 1.0)]["tf_kl_mean"] == 0.0
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
