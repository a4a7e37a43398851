"""bench tasks' scores (EM/F1, RULER's needle recall, agreement with full prefill) and the JSON figures the runner
derives from per-example rows."""

import math

import pytest

from chunkcache.bench.tasks.example import TaskExample
from chunkcache.bench.tasks.metrics import agreement, exact_match, needle_recall, needles_kept, task_scores
from chunkcache.bench.tasks.runner import KEYS, TasksConfig, merge_results, report, score_rows, summarize, sweep_configs
from chunkcache.blend.config import DEFAULT_MODE


def test_exact_match_and_f1_normalise_like_squad():
    assert exact_match("The Eiffel Tower.", ("eiffel tower",)) == 1.0
    assert exact_match("Eiffel Tower in Paris", ("eiffel tower",)) == 0.0
    scores = task_scores("f1", "Eiffel Tower in Paris", ("eiffel tower",))
    assert scores == {"task_score": pytest.approx(2 * 0.5 * 1 / 1.5), "em": 0.0}  # P 2/4, R 2/2


def test_needle_recall_is_ruler_string_match_all():
    assert needle_recall("The numbers are 1234567, 7654321.", ("1234567", "7654321", "1111111", "2222222")) == 0.5
    assert needle_recall("var abcde and FGHIJ", ("ABCDE", "fghij")) == 1.0  # case-insensitive substring
    assert task_scores("recall", "nothing here", ("1234567",)) == {"task_score": 0.0}
    with pytest.raises(ValueError, match="score kind"):
        task_scores("bleu", "x", ("x",))


def test_needles_kept_counts_what_full_prefill_found_and_the_answer_kept():
    needles = ("1234567", "7654321", "1111111", "2222222")
    full = "The numbers are 1234567, 7654321 and 1111111."
    assert needles_kept("1234567 and 2222222", full, needles) == {"needles_full": 3, "needles_kept": 1}
    assert needles_kept(full.upper(), full, needles) == {"needles_full": 3, "needles_kept": 3}
    assert needles_kept("1234567", "none", needles) == {"needles_full": 0, "needles_kept": 0}


def test_recall_rows_pool_the_needles_kept_over_examples():
    """Scored rows of a recall suite carry the counts; the summary pools them (kept / found, not a mean of ratios)."""
    ex = [TaskExample(id=str(i), chunks=("a",), question="q", answers=("111", "222")) for i in range(2)]
    rows = [{"timed": False, "pareto": False, "modes": score_rows(
        {"full": {**_full(), "answer": full}, "blend": {**_row(0, 0, 0.1, 1.0), "answer": mine}}, e, "recall")}
        for e, full, mine in zip(ex, ("111 and 222", "111"), ("222", "nothing"), strict=True)]
    assert rows[0]["modes"]["blend"]["needles_kept"] == 1 and rows[1]["modes"]["blend"]["needles_full"] == 1
    assert rows[0]["modes"]["blend"]["task_score"] == 0.5
    assert summarize(rows, "blend")["needles_kept_of_full"] == pytest.approx(1 / 3)  # 1 of the 3 full found
    assert summarize(rows, "full")["needles_kept_of_full"] == 1.0
    f1_rows = [{"timed": False, "pareto": False, "modes": {"full": _full(), "blend": _row(1.0, 1.0, 0.1, 4.0)}}]
    assert "needles_kept_of_full" not in summarize(f1_rows, "blend")  # F1 suites: no needles


def test_agreement_with_full_prefill():
    assert agreement("Paris, France", "paris france") == {"agreement_exact": 1.0, "agreement_f1": 1.0}
    assert agreement("Paris", "Paris France") == {"agreement_exact": 0.0, "agreement_f1": pytest.approx(2 / 3)}
    assert agreement("", "the") == {"agreement_exact": 1.0, "agreement_f1": 1.0}  # both empty once normalised


def _row(score, agree, kl, speedup, fraction=0.15):
    return {"task_score": score, "agreement_f1": agree, "agreement_exact": float(agree == 1.0), "tf_kl": kl,
            "tf_top1": 1.0 - kl, "speedup": speedup, "ttft_s": 1.0 / speedup, "recompute_fraction": fraction}


def _full():
    return {"task_score": 1.0, "agreement_f1": 1.0, "agreement_exact": 1.0, "tf_kl": 0.0, "tf_top1": 1.0,
            "ttft_s": 1.0, "recompute_fraction": 1.0}


def test_summary_means_fidelity_over_all_and_speedup_over_the_timed_examples():
    rows = [{"timed": True, "pareto": True, "modes": {"full": _full(), "blend": _row(1.0, 1.0, 0.1, 4.0),
                                                       "blend@0.3": _row(1.0, 1.0, 0.05, 2.0, 0.3)}},
            {"timed": True, "pareto": False, "modes": {"full": _full(), "blend": _row(0.0, 0.5, 0.3, 6.0)}},
            {"timed": False, "pareto": False, "modes": {"full": _full(), "blend": _row(0.5, 0.0, 0.2, 100.0)}}]
    s = summarize(rows, "blend")
    assert s["task_score"] == pytest.approx(0.5) and s["agreement_f1"] == pytest.approx(0.5)
    assert s["agreement_exact"] == pytest.approx(1 / 3) and s["tf_kl_mean"] == pytest.approx(0.2)
    assert s["ttft_speedup_vs_full_median"] == 5.0  # the untimed 100x is not counted
    assert s["n"] == 3 and s["n_timed"] == 2
    out = report(rows, TasksConfig(modes=("full", "blend"), ratios=(0.3,)))
    assert set(KEYS) <= set(out["modes"]["blend"])
    pareto = {(r["mode"], r["ratio"]): r for r in out["pareto"]}
    assert set(pareto) == {("full", 1.0), ("blend", 0.15), ("blend", 0.3)}  # the base ratio is on the curve too
    assert pareto[("blend", 0.3)]["n"] == 1 and pareto[("blend", 0.3)]["tf_kl_mean"] == 0.05
    assert pareto[("blend", 0.15)]["n"] == 1 and pareto[("blend", 0.15)]["tf_kl_mean"] == 0.1
    assert pareto[("blend", 0.15)]["ttft_speedup_vs_full_median"] == 4.0
    assert pareto[("full", 1.0)]["n"] == 1  # the Pareto rows come from the Pareto subset only
    assert [r["ratio"] for r in out["pareto"] if r["mode"] == "blend"] == [0.15, 0.3]


def test_tpot_ratio_is_the_median_of_paired_decode_step_times_over_the_timed_examples():
    def row(timed, full_tpot, mode_tpot):
        return {"timed": timed, "pareto": False,
                "modes": {"full": {**_full(), "tpot_s": full_tpot}, "blend": {**_row(1.0, 1.0, 0.1, 4.0),
                                                                              "tpot_s": mode_tpot}}}

    rows = [row(True, 0.04, 0.12), row(True, 0.05, 0.10), row(True, 0.02, 0.08), row(False, 0.01, 1.0)]
    assert summarize(rows, "blend")["tpot_ratio_vs_full_median"] == pytest.approx(3.0)  # 3, 2, 4: not the 100
    assert summarize(rows, "full")["tpot_ratio_vs_full_median"] == pytest.approx(1.0)
    old = [{"timed": True, "pareto": False, "modes": {"full": _full(), "blend": _row(1.0, 1.0, 0.1, 4.0)}}]
    assert summarize(old, "blend")["tpot_ratio_vs_full_median"] is None  # a run joined from before tpot_s


def test_answer_speedup_pairs_whole_answer_times_each_over_its_own_answer():
    def row(timed, full, mode):  # (ttft_s, decode_s) of full and of the mode
        return {"timed": timed, "pareto": False,
                "modes": {"full": {**_full(), "ttft_s": full[0], "decode_s": full[1]},
                          "blend": {**_row(1.0, 1.0, 0.1, 4.0), "ttft_s": mode[0], "decode_s": mode[1]}}}

    rows = [row(True, (2.0, 1.0), (0.5, 3.5)), row(True, (2.0, 2.0), (0.5, 1.5)), row(True, (1.0, 1.0), (0.5, 4.5)),
            row(False, (9.0, 9.0), (0.1, 0.1))]
    out = summarize(rows, "blend")
    assert out["answer_speedup_vs_full_median"] == pytest.approx(0.75)  # 3/4, 4/2, 2/5: the untimed 180 left out
    assert summarize(rows, "full")["answer_speedup_vs_full_median"] == pytest.approx(1.0)
    old = [{"timed": True, "pareto": False, "modes": {"full": _full(), "blend": _row(1.0, 1.0, 0.1, 4.0)}}]
    assert summarize(old, "blend")["answer_speedup_vs_full_median"] is None  # a run from before decode_s


def test_sweep_point_at_the_base_ratio_is_the_main_runs_not_a_second_prefill():
    cfg = TasksConfig(modes=("full", "blend", "epic"), ratios=(0.05, 0.15))  # base ratio 0.15
    run, same = sweep_configs(cfg)
    assert set(run) == {"blend@0.05", "epic@0.05", "epic@0.15"}  # the sweep's epic is budget-matched (epic_k=0)
    assert same == {"blend@0.15": "blend"}
    rows = [{"timed": True, "pareto": True, "modes": {"full": _full(), "blend": _row(1.0, 0.8, 0.1, 4.0),
                                                       "blend@0.05": _row(1.0, 0.6, 0.2, 6.0, 0.05),
                                                       "epic": _row(1.0, 0.5, 0.3, 5.0, 0.1),
                                                       "epic@0.05": _row(1.0, 0.4, 0.4, 7.0, 0.05),
                                                       "epic@0.15": _row(1.0, 0.5, 0.3, 5.0)}}]
    pareto = {(r["mode"], r["ratio"]): r for r in report(rows, cfg)["pareto"]}
    assert pareto[("blend", 0.15)]["agreement_f1"] == 0.8 and pareto[("blend", 0.05)]["agreement_f1"] == 0.6


def _result(modes, ratios, rows):
    config = {"modes": modes, "ratios": ratios, "recompute_ratio": 0.15, "max_new": 32, "model": "m", "dtype": "f"}
    return {"suite": "hotpotqa", "split": "test", "config": config, "data": {"n": len(rows)}, "examples": rows}


def _answered(row, answer):
    return {**row, "answer": answer}


def test_merge_joins_runs_of_other_modes_on_the_same_examples_by_columns():
    D = DEFAULT_MODE  # dominance is measured for the default mode
    full = _answered(_full(), "paris")
    main_rows = [{"id": f"e{k}", "setting": "", "timed": k == 0, "pareto": False,
                  "modes": {"full": full, D: _answered(_row(1.0, 0.8, 0.1, 4.0), "paris"),
                            "cacheblend": _answered(_row(1.0, 0.7, 0.2, 5.0), "rome")}} for k in range(2)]
    sweep_rows = [{"id": f"e{k}", "setting": "", "timed": k == 0, "pareto": True,
                   "modes": {"full": full, D: _answered(_row(1.0, 0.8, 0.1, 3.0), "paris"),
                             f"{D}@0.05": _answered(_row(1.0, 0.6, 0.3, 7.0, 0.05), "lyon")}} for k in range(2)]
    main, sweep = _result(["full", D, "cacheblend"], [], main_rows), _result(["full", D], [0.05, 0.15],
                                                                                      sweep_rows)
    out = merge_results([main, sweep])
    assert out["config"]["joined_by"] == "columns" and out["config"]["ratios"] == [0.05, 0.15]
    assert out["modes"]["cacheblend"]["agreement_f1"] == 0.7 and out["modes"][D]["n"] == 2
    assert out["modes"][D]["ttft_speedup_vs_full_median"] == 4.0  # the first run's measurement is kept
    pareto = {(r["mode"], r["ratio"]): r for r in out["pareto"]}
    assert set(pareto) == {("full", 1.0), (D, 0.05), (D, 0.15), ("cacheblend", 0.15)}
    assert pareto[(D, 0.05)]["ttft_speedup_vs_full_median"] == 7.0
    assert pareto[("cacheblend", 0.15)]["tf_kl_mean"] == 0.2
    dom = {r["mode"]: r for r in out["dominance"]["rows"]}  # the default: (4x, 0.2, 0.1) and (7x, 0.4, 0.3)
    assert dom["cacheblend"]["default_kl"] == pytest.approx(0.1 + 0.2 * math.log(5 / 4) / math.log(7 / 4))
    assert dom["cacheblend"]["kl_ratio"] == pytest.approx(dom["cacheblend"]["default_kl"] / 0.2)
    assert dom["cacheblend"]["disagreement"] == pytest.approx(0.3)
    assert dom["cacheblend"]["met"] is False  # KL 0.90x, disagreement 0.93x: above 0.7x
    sweep_rows[1]["modes"][D] = _answered(sweep_rows[1]["modes"][D], "berlin")
    with pytest.raises(ValueError, match=f"{D} answered example e1 differently"):
        merge_results([main, sweep])
    sweep_rows[1]["modes"][D]["answer"], sweep_rows[1]["timed"] = "paris", True
    with pytest.raises(ValueError, match="example e1 is timed in one of results 0 and 1"):
        merge_results([main, sweep])
    with pytest.raises(ValueError, match="no other mode"):
        merge_results([main, main])


def test_merge_refuses_shards_run_with_another_decode_correction_or_linear_dtype():
    rows = lambda ids: [{"id": i, "setting": "", "timed": False, "pareto": False,  # noqa: E731
                         "modes": {"full": _answered(_full(), "x")}} for i in ids]
    old, new = _result(["full"], [], rows(["a"])), _result(["full"], [], rows(["b"]))
    new["config"]["decode_correction_steps"] = 0  # an older result has no such key: the same as 0
    assert merge_results([old, new])["modes"]["full"]["n"] == 2
    new["config"]["decode_correction"] = 1024
    with pytest.raises(ValueError, match="config.decode_correction 1024, result 0 0"):
        merge_results([old, new])
    new["config"]["decode_correction"] = 0
    new["config"]["linear_dtype"] = "float32"  # an older result ran fp32 linear layers
    assert merge_results([old, new])["modes"]["full"]["n"] == 2
    new["config"]["linear_dtype"] = "bfloat16"
    with pytest.raises(ValueError, match="config.linear_dtype 'bfloat16', result 0 'float32'"):
        merge_results([old, new])


def test_config_refuses_bad_values():
    assert TasksConfig(modes=("blend",)).modes == ("full", "blend")
    with pytest.raises(ValueError, match="mode must be one of"):
        TasksConfig(modes=("bogus",))
    with pytest.raises(ValueError, match="min_full_score"):
        TasksConfig(modes=("full",), min_full_score=80)
    with pytest.raises(ValueError, match="repeats"):
        TasksConfig(modes=("full",), repeats=0)
