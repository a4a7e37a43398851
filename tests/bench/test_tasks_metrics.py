"""bench tasks' scores (EM/F1, RULER's needle recall, agreement with full prefill) and the JSON figures the runner
derives from per-example rows."""

import pytest

from chunkcache.bench.tasks.metrics import agreement, exact_match, needle_recall, task_scores
from chunkcache.bench.tasks.runner import KEYS, TasksConfig, report, summarize, sweep_configs


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
    assert set(pareto) == {("full", 1.0), ("blend", 0.3)}
    assert pareto[("blend", 0.3)]["n"] == 1 and pareto[("blend", 0.3)]["tf_kl_mean"] == 0.05
    assert pareto[("full", 1.0)]["n"] == 1  # the Pareto rows come from the Pareto subset only


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


def test_config_refuses_bad_values():
    assert TasksConfig(modes=("blend",)).modes == ("full", "blend")
    with pytest.raises(ValueError, match="mode must be one of"):
        TasksConfig(modes=("bogus",))
    with pytest.raises(ValueError, match="min_full_score"):
        TasksConfig(modes=("full",), min_full_score=80)
    with pytest.raises(ValueError, match="repeats"):
        TasksConfig(modes=("full",), repeats=0)
