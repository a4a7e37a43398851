"""`chunkcache calibrate`: the per-model quality gate on the tiny random llama (a target that forces a ratio above
the lowest tried; the stored file; a request asking for the calibrated ratio) and on the real model."""

import json
from dataclasses import replace

import pytest
import torch

from chunkcache.bench.calibrate import CalibrationConfig, calibrate, load_sample, store_calibration
from chunkcache.blend.config import DEFAULT_MODE, RULE_REVISIONS, BlendConfig, rule_revision
from chunkcache.blend.model_profile import calibrated_ratio, calibrations, profile_path
from chunkcache.blend.request import BlendRequest

PREFIX = (1, 2, 3)


def _requests(n=2):
    g = torch.Generator().manual_seed(7)
    return [BlendRequest.of(PREFIX, [tuple(torch.randint(4, 256, (k,), generator=g).tolist()) for k in (12, 30, 25)],
                            torch.randint(4, 256, (5,), generator=g).tolist()) for _ in range(n)]


def test_calibrate_picks_the_smallest_ratio_meeting_the_target(tiny_blender, tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    cfg = CalibrationConfig(ratios=(0.05, 0.5, 1.0), target_agreement=0.99, max_new=6)
    res = calibrate(tiny_blender, _requests(), cfg)
    rows = {r["recompute_ratio"]: r for r in res["rows"]}
    assert rows[0.05]["agreement_f1"] < 0.99  # the lowest ratio misses the target on this model
    assert rows[1.0]["agreement_f1"] == 1.0 and rows[1.0]["tf_kl_mean"] < 1e-6 and rows[1.0]["tf_top1_agreement"] == 1.0
    want = min(x for x, r in rows.items() if r["agreement_f1"] >= 0.99)
    assert res["met"] and res["recompute_ratio"] == want > 0.05 and res["n"] == 2
    path = store_calibration(tiny_blender.runner.fingerprint, res)
    assert path == profile_path(tiny_blender.runner.fingerprint) and path.parent == tmp_path / "profiles"
    stored = json.loads(path.read_text())
    assert res["mode"] == "blend"  # the default, a fused mode, runs blend over requests without fused contexts
    assert stored["fingerprint"] == tiny_blender.runner.fingerprint
    blend = stored["calibrated"]["blend"]
    assert blend["recompute_ratio"] == want and blend["rows"] == res["rows"]
    assert blend["config"]["target_agreement"] == 0.99
    assert calibrated_ratio(tiny_blender.runner.fingerprint, mode="blend") == want
    with pytest.raises(ValueError, match=f"'{DEFAULT_MODE}'"):  # the default itself was not calibrated
        calibrated_ratio(tiny_blender.runner.fingerprint)
    req = _requests(1)[0]
    asked = tiny_blender.prefill(req, BlendConfig(calibrated=True))
    explicit = tiny_blender.prefill(req, BlendConfig(recompute_ratio=want))
    low = tiny_blender.prefill(req, BlendConfig(recompute_ratio=0.05))
    assert asked.stats.recomputed_tokens == explicit.stats.recomputed_tokens > low.stats.recomputed_tokens
    assert torch.equal(asked.logits, explicit.logits)


def _fused(req):
    """req with a fused context per chunk: the prefix and the next chunk's first 6 tokens."""
    return replace(req, fused=tuple((*PREFIX, *req.chunks[(i + 1) % 3][:6]) for i in range(3)))


def _result(mode, ratio, rule=None):
    return {"mode": mode, "recompute_ratio": ratio, "met": True, "n": 1, "rows": [], "config": {"mode": mode},
            "rule": rule_revision(mode) if rule is None else rule}


def test_the_fused_default_and_its_blend_fallback_each_run_at_their_own_ratio(tiny_blender, tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    fp = tiny_blender.runner.fingerprint
    plain = _requests(1)[0]
    fused = _fused(plain)
    with pytest.raises(ValueError, match="one mode"):  # the default over these would run as two modes
        calibrate(tiny_blender, [plain, fused], CalibrationConfig(max_new=2))
    store_calibration(fp, _result(DEFAULT_MODE, 0.1))
    store_calibration(fp, _result("blend", 0.5))
    assert set(calibrations(fp)) == {DEFAULT_MODE, "blend"}  # the second did not replace the first
    for req, mode, ratio in ((plain, "blend", 0.5), (fused, DEFAULT_MODE, 0.1)):
        asked = tiny_blender.prefill(req, BlendConfig(calibrated=True))  # the default mode
        explicit = tiny_blender.prefill(req, BlendConfig(mode=mode, recompute_ratio=ratio))
        assert asked.stats.mode == mode
        assert asked.stats.recomputed_tokens == explicit.stats.recomputed_tokens
        assert torch.equal(asked.logits, explicit.logits)
    more = tiny_blender.prefill(fused, BlendConfig(recompute_ratio=0.5)).stats.recomputed_tokens
    assert more > tiny_blender.prefill(fused, BlendConfig(calibrated=True)).stats.recomputed_tokens
    # a profile written before calibrations were kept per mode: its one calibration, under its mode
    path = profile_path(fp)
    old = {k: v for k, v in _result("blend", 0.3).items() if k != "rule"}  # nor rule revisions: rule 1
    path.write_text(json.dumps({"fingerprint": fp, "calibrated": old}))
    assert calibrated_ratio(fp, mode="blend") == 0.3
    with pytest.raises(ValueError, match="chunkcache calibrate --mode fusion"):
        calibrated_ratio(fp, mode="fusion")


def test_a_ratio_calibrated_under_an_older_selection_rule_is_refused(tiny_blender, tmp_path, monkeypatch):
    """fusionqc's rule changed after calibrations were stored (rule 2: blend's chunk heads pinned): a ratio measured
    under rule 1 says so and names the command, instead of running the new rule at a ratio chosen for the old one."""
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    fp = tiny_blender.runner.fingerprint
    assert rule_revision("fusionqc") == RULE_REVISIONS["fusionqc"] >= 2 and rule_revision("blend") == 1
    store_calibration(fp, _result("fusionqc", 0.1, rule=1))
    store_calibration(fp, _result("blend", 0.2, rule=1))
    with pytest.raises(ValueError, match=r"rule 1.*rule 2.*chunkcache calibrate --mode fusionqc"):
        calibrated_ratio(fp, mode="fusionqc")
    plain = _requests(1)[0]
    fused = _fused(plain)
    with pytest.raises(ValueError, match="calibrated"):
        tiny_blender.prefill(fused, BlendConfig(mode="fusionqc", calibrated=True))
    assert calibrated_ratio(fp, mode="blend") == 0.2  # blend's rule is unchanged: its ratio still serves
    store_calibration(fp, _result("fusionqc", 0.3))  # recalibrated: the current rule is stored with it
    assert calibrations(fp)["fusionqc"]["rule"] == rule_revision("fusionqc")
    assert calibrated_ratio(fp, mode="fusionqc") == 0.3


def test_calibrate_records_the_rule_of_the_mode_that_ran(tiny_blender, tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    plain = _requests(1)[0]
    fused = _fused(plain)
    cfg = CalibrationConfig(mode="fusionqc", ratios=(0.2,), target_agreement=0.0, max_new=2)
    assert calibrate(tiny_blender, [fused], cfg)["rule"] == rule_revision("fusionqc")
    assert calibrate(tiny_blender, [plain], cfg)["rule"] == rule_revision("blend")  # it ran as blend


def test_a_ratio_calibrated_with_decode_correction_is_kept_apart_and_serves_that_correction(tiny_blender, tmp_path,
                                                                                           monkeypatch):
    """Calibrated with a correction that recomputes the whole prompt at the first step, every answer token after the
    first is predicted over full prefill's cache (only row 0, the prefill's, keeps its KL): KL falls below the
    uncorrected run's at each ratio. The ratio is
    stored beside the mode's own; a request with that K gets it, one with another K the uncorrected one."""
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    fp, reqs, k = tiny_blender.runner.fingerprint, _requests(), 512
    assert all(r.num_tokens < k for r in reqs)
    plain = calibrate(tiny_blender, reqs, CalibrationConfig(ratios=(0.0, 0.05), target_agreement=0.0, max_new=6))
    fixed = calibrate(tiny_blender, reqs, CalibrationConfig(ratios=(0.0, 0.05), target_agreement=0.0, max_new=6,
                                                             decode_correction=k))
    for p, f in zip(plain["rows"], fixed["rows"], strict=True):
        assert f["tf_kl_mean"] < p["tf_kl_mean"] and f["tf_top1_agreement"] >= p["tf_top1_agreement"]
    store_calibration(fp, {**plain, "recompute_ratio": 0.05})
    store_calibration(fp, {**fixed, "recompute_ratio": 0.0})
    assert set(calibrations(fp)) == {"blend", f"blend:decode_correction={k}"}
    assert calibrated_ratio(fp, mode="blend", decode_correction=k) == 0.0
    assert calibrated_ratio(fp, mode="blend", decode_correction=64) == 0.05  # not calibrated with 64: the plain one
    assert calibrated_ratio(fp, mode="blend") == 0.05
    req = reqs[0]
    asked = tiny_blender.prefill(req, BlendConfig(mode="blend", calibrated=True, decode_correction=k))
    explicit = tiny_blender.prefill(req, BlendConfig(mode="blend", recompute_ratio=0.0, decode_correction=k))
    assert asked.stats.recomputed_tokens == explicit.stats.recomputed_tokens
    assert torch.equal(asked.logits, explicit.logits)
    with pytest.raises(ValueError, match="decode_correction"):
        CalibrationConfig(decode_correction=-1)
    with pytest.raises(ValueError, match="one, not both"):
        CalibrationConfig(decode_correction=k, decode_correction_steps=2)


def test_a_ratio_calibrated_within_s_steps_is_kept_apart_from_a_per_step_k(tiny_blender, tmp_path, monkeypatch):
    """decode_correction_steps=1 recomputes the whole prompt at the first step, as a K above every prompt's length
    does: the same rows; stored under its own key, and served to requests with that S only."""
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    fp, reqs, k = tiny_blender.runner.fingerprint, _requests(), 512
    cfg = CalibrationConfig(ratios=(0.0, 0.05), target_agreement=0.0, max_new=6)
    by_k = calibrate(tiny_blender, reqs, replace(cfg, decode_correction=k))
    by_s = calibrate(tiny_blender, reqs, replace(cfg, decode_correction_steps=1))
    assert [r["tf_kl_mean"] for r in by_s["rows"]] == [r["tf_kl_mean"] for r in by_k["rows"]]
    store_calibration(fp, {**by_k, "recompute_ratio": 0.05})
    store_calibration(fp, {**by_s, "recompute_ratio": 0.0})
    assert set(calibrations(fp)) == {f"blend:decode_correction={k}", "blend:decode_correction_steps=1"}
    assert calibrated_ratio(fp, mode="blend", decode_correction_steps=1) == 0.0
    assert calibrated_ratio(fp, mode="blend", decode_correction=k) == 0.05


def test_kl_target_and_unmet_target(tiny_blender, tmp_path):
    res = calibrate(tiny_blender, _requests(1), CalibrationConfig(ratios=(0.05, 0.5), target_agreement=0.0,
                                                                 target_kl=0.0, max_new=4))
    assert not res["met"] and res["recompute_ratio"] == 1.0  # nothing below full recompute has KL 0


def test_an_uncalibrated_model_and_bad_input_name_the_field(tiny_blender, tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="calibrated"):
        tiny_blender.prefill(_requests(1)[0], BlendConfig(calibrated=True))
    with pytest.raises(ValueError, match="ratios"):
        CalibrationConfig(ratios=(0.5, 0.1))
    with pytest.raises(ValueError, match="mode"):
        CalibrationConfig(mode="naive")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"chunks": ["a", ""], "question": "q"}]))
    with pytest.raises(ValueError, match="chunks"):
        load_sample(bad)
    good = tmp_path / "own.json"
    good.write_text(json.dumps([{"chunks": ["a b", "c"], "question": "q?"}]))
    assert load_sample(good) == [(["a b", "c"], "q?")]
    assert len(load_sample(None, limit=3)) == 3


SHORT = [(["Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. "
            "She was born in Warsaw in 1867.",
            "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 for the World's Fair.",
            "Warsaw is the capital and largest city of Poland, on the Vistula river."],
           "In which city was Marie Curie born?"),
          (["The Nile is a major north-flowing river in northeastern Africa, about 6,650 km long.",
            "Mount Kilimanjaro is a dormant volcano in Tanzania, the highest mountain in Africa.",
            "The Amazon river in South America is the largest river by discharge volume of water."],
           "Which is the highest mountain in Africa?")]


def test_calibrate_on_the_real_model(smollm, tmp_path):
    """2 short examples (the bundled MuSiQue ones are about 6K tokens: minutes each on a loaded CPU)."""
    from chunkcache.blend.chunk_source import DictStore
    from chunkcache.blend.engine import ChunkCacheEngine
    from chunkcache.runner.runner import ModelRunner

    engine = ChunkCacheEngine(ModelRunner(smollm.model, smollm.tokenizer), DictStore())
    reqs = [engine.prompts.request(chunks, q) for chunks, q in SHORT]
    cfg = CalibrationConfig(ratios=(0.15, 1.0), target_agreement=0.9, max_new=8)
    decode = lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    res = calibrate(engine.blender, reqs, cfg, engine.eos_ids, decode)
    rows = {r["recompute_ratio"]: r for r in res["rows"]}
    assert rows[1.0]["agreement_f1"] == 1.0 and rows[1.0]["tf_kl_mean"] < 1e-4
    assert rows[0.15]["tf_kl_mean"] > rows[1.0]["tf_kl_mean"] and 0.0 <= rows[0.15]["agreement_f1"] <= 1.0
    assert res["recompute_ratio"] == (0.15 if rows[0.15]["agreement_f1"] >= 0.9 else 1.0)
    store_calibration(engine.runner.fingerprint, res, tmp_path)
    assert res["mode"] == "blend"  # plain requests: the fused default runs blend
    assert calibrated_ratio(engine.runner.fingerprint, tmp_path, "blend") == res["recompute_ratio"]
