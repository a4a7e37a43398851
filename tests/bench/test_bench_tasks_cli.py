"""`chunkcache bench tasks` end to end with the real model on RULER NIAH (a smoke run of the JSON, the gate and the
plot, not a measurement; 1K-token prompts keep it short)."""

import json
import math

import pytest

from chunkcache.bench.tasks.runner import KEYS
from chunkcache.cli import main


def test_bench_tasks_niah_writes_every_figure(tmp_path, smollm):
    out, png = tmp_path / "niah.json", tmp_path / "niah.png"
    assert main(["--store", "memory", "bench", "tasks", "--suite", "niah", "--limit", "2", "--lengths", "1024",
                 "--variants", "multikey", "--modes", "full,blend,fusionqc", "--max-new-tokens", "10", "--repeats", "1",
                 "--min-full-score", "0", "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert res["suite"] == "niah" and res["split"] == "dev" and res["data"]["n"] == 2
    assert "0" not in res["data"]["gold_positions"]["per_chunk_index"]  # no needle in the first chunk
    modes = res["modes"]
    assert set(modes) == {"full", "blend", "fusionqc"}
    for fig in modes.values():
        assert set(KEYS) <= set(fig) and fig["n"] == 2
    full, blend = modes["full"], modes["blend"]
    assert full["agreement_f1"] == full["agreement_exact"] == 1.0 and full["tf_kl_mean"] == 0.0
    assert 0.149 < blend["recompute_fraction"] < 0.151 and blend["tf_kl_mean"] > 0
    assert 0.149 < modes["fusionqc"]["recompute_fraction"] < 0.151
    for row in res["examples"]:
        assert row["modes"]["full"]["task_score"] in (0.0, 1.0) and row["id"].startswith("multikey-1024/dev/")
        assert row["modes"]["full"]["prompt_tokens"] + 10 <= 1024
        # each chunk precomputed again behind its 2 neighbours: about twice the plain tokens, timed
        assert 1.5 * row["plain_tokens"] < row["fusion_extra_tokens"] < 2.5 * row["plain_tokens"]
        assert row["fusion_precompute_s"] > 0
    assert png.stat().st_size > 10_000


def test_a_rerun_with_reuse_fused_keeps_the_stored_fused_entries(tmp_path, smollm):
    """--reuse-fused on a disk store an earlier run filled: no fused entry computed again, the same figures."""
    base = ["--store", "disk", "--cache-dir", str(tmp_path / "cache"), "bench", "tasks", "--suite", "niah",
            "--limit", "1", "--lengths", "1024", "--variants", "multikey", "--modes", "full,fusionqc",
            "--max-new-tokens", "6", "--repeats", "1", "--timed", "0", "--min-full-score", "0"]
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    assert main([*base, "--json", str(first)]) == 0
    assert main([*base, "--reuse-fused", "--json", str(again)]) == 0
    (a,), (b,) = (json.loads(f.read_text())["examples"] for f in (first, again))
    assert a["fused_computed"] >= 3 and a["fusion_extra_tokens"] > a["plain_tokens"]
    assert b["fused_computed"] == 0 and b["fusion_extra_tokens"] == 0
    assert json.loads(again.read_text())["config"]["reuse_fused"] is True
    for key in ("answer", "tf_kl", "agreement_f1"):
        assert b["modes"]["fusionqc"][key] == a["modes"]["fusionqc"][key], key  # lossless disk entries


def test_bench_tasks_gate_skips_settings_full_prefill_fails(tmp_path, smollm):
    out = tmp_path / "gate.json"
    assert main(["--store", "memory", "bench", "tasks", "--suite", "niah", "--limit", "1", "--lengths", "1024",
                 "--variants", "multikey", "--modes", "full,naive", "--max-new-tokens", "1",
                 "--min-full-score", "1.0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["gate"] == {"multikey-1024": {"full_score": 0.0, "n": 1, "included": False}}  # 1 token: no 7 digits
    assert res["modes"] == {} and res["examples"] == []


def test_bench_tasks_refuses_bad_arguments_before_the_model_loads(capsys):
    assert main(["bench", "tasks", "--suite", "niah", "--variants", "triple"]) == 2
    assert "--variants: 'triple'" in capsys.readouterr().err
    assert main(["bench", "tasks", "--suite", "hotpotqa", "--modes", "full,bogus"]) == 2
    assert "mode must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "tasks", "--suite", "squad"])


def test_shards_run_with_skip_merge_into_the_whole_run(tmp_path, smollm):
    """Two shards (--skip) merged give the figures of one run over both examples (fidelity is deterministic);
    shards of different configurations or overlapping examples are refused by name."""
    base = ["--store", "memory", "bench", "tasks", "--suite", "niah", "--lengths", "1024", "--variants", "multikey",
            "--modes", "full,naive", "--max-new-tokens", "6", "--repeats", "1", "--min-full-score", "0"]
    whole, a, b, merged = (tmp_path / f"{n}.json" for n in ("whole", "a", "b", "merged"))
    assert main([*base, "--limit", "2", "--json", str(whole)]) == 0
    assert main([*base, "--limit", "1", "--json", str(a)]) == 0
    assert main([*base, "--limit", "1", "--skip", "1", "--timed", "0", "--json", str(b)]) == 0
    assert main(["bench", "tasks", "--merge", str(a), str(b), "--json", str(merged)]) == 0
    w, m = json.loads(whole.read_text()), json.loads(merged.read_text())
    assert [r["id"] for r in m["examples"]] == [r["id"] for r in w["examples"]]
    for mode in ("full", "naive"):
        for key in ("task_score", "agreement_f1", "tf_kl_mean", "tf_top1_agreement", "n"):
            assert m["modes"][mode][key] == pytest.approx(w["modes"][mode][key], rel=1e-6), (mode, key)
    assert m["modes"]["naive"]["n_timed"] == 1 and m["data"]["n"] == 2
    assert main(["bench", "tasks", "--merge", str(a), str(a)]) == 2  # the same example twice
    other = json.loads(b.read_text())
    other["config"]["modes"] = ["full"]
    b.write_text(json.dumps(other))
    assert main(["bench", "tasks", "--merge", str(a), str(b)]) == 2
    corrected = tmp_path / "corrected.json"
    assert main([*base, "--limit", "1", "--skip", "1", "--timed", "0", "--decode-correction-steps", "2",
                 "--json", str(corrected)]) == 0
    row = json.loads(corrected.read_text())["examples"][0]["modes"]["naive"]
    assert row["decode_pending"] > 0 and row["decode_per_step"] == math.ceil(row["decode_pending"] / 2)
    assert w["examples"][0]["modes"]["naive"]["decode_pending"] == 0
    assert main(["bench", "tasks", "--merge", str(a), str(corrected)]) == 2  # another correction


def test_a_correction_gate_is_recorded_per_row_and_refused_without_a_correction(tmp_path, smollm, capsys):
    """--correction-gate 1: every step is unsure, so the first decode step finishes the correction (gated_at 1) and
    the answer from there on is full prefill's; without a correction the gate is refused by name."""
    out = tmp_path / "gated.json"
    base = ["--store", "memory", "bench", "tasks", "--suite", "niah", "--lengths", "1024", "--variants", "multikey",
            "--modes", "full,naive", "--max-new-tokens", "6", "--repeats", "1", "--min-full-score", "0", "--limit", "1"]
    assert main([*base, "--decode-correction", "64", "--correction-gate", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["correction_gate"] == 1.0
    full, naive = res["examples"][0]["modes"]["full"], res["examples"][0]["modes"]["naive"]
    assert naive["gated_at"] == 1 and naive["decode_pending"] > 64 and "gated_at" not in full
    assert naive["first_token"] == 0.0 or naive["answer"] == full["answer"]
    assert main([*base, "--correction-gate", "0.4"]) == 2
    assert "correction_gate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--decode-correction", "8", "--correction-gate", "1.5"])
