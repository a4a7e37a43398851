"""`chunkcache calibrate`: measure a mode against full prefill on a small sample and store, per model fingerprint,
the smallest recompute ratio meeting a quality target (bench/calibrate.py), per mode: in a fused mode, its
fallback blend too (on the same sample without fused contexts); optionally profile qcfuse's
critical layers on the same sample (blend/qcfuse_profile.py)."""

from __future__ import annotations

import json
from dataclasses import replace

from chunkcache.blend.config import DEFAULT_MODE, FUSED_MODES, MODES, UNFUSED_MODE
from chunkcache.blend.model_profile import calibration_key
from chunkcache.config.arg_types import positive, ratio, ratios


def cmd_calibrate(args) -> int:  # type: ignore[no-untyped-def]
    from chunkcache.bench.calibrate import CalibrationConfig, load_sample
    from chunkcache.blend.engine import ChunkCacheEngine

    cfg = CalibrationConfig(mode=args.mode, ratios=tuple(args.ratios), target_agreement=args.target_agreement,
                            target_kl=args.target_kl, max_new=args.max_new, decode_correction=args.decode_correction,
                            decode_correction_steps=args.decode_correction_steps)
    sample = load_sample(args.data, args.limit)
    with ChunkCacheEngine.from_config(args.engine) as engine:
        res = run_calibration(engine, cfg, sample, args.critical_layers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def run_calibration(engine, cfg, sample: list[tuple[list[str], str]],  # type: ignore[no-untyped-def]
                    critical: bool = False) -> dict:
    """Calibrate engine's model on sample ((chunks, question) pairs), store the picked ratio (and, if asked, the
    critical layers) under the engine's profile root, where its blender reads them; print one line per ratio and
    the verdict; the result dict."""
    from chunkcache.bench.calibrate import calibrate, references, store_calibration

    root = engine.profile_root

    plain = [engine.prompts.request(chunks, q) for chunks, q in sample]
    reqs = plain
    if cfg.mode in FUSED_MODES:  # each example's chunks are its corpus (as in `bench tasks`); entries the store
        # lacks are precomputed
        from chunkcache.blend.fusion import with_fused
        from chunkcache.retrieval.embedder import Embedder

        embedder = Embedder()
        reqs = [with_fused(engine.source, req, embedder.encode(chunks), reuse=True)
                for req, (chunks, _) in zip(plain, sample, strict=True)]
    decode = lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    refs = references(engine.blender, plain, cfg.max_new, engine.eos_ids, decode)  # full prefill once, every mode
    res = calibrate(engine.blender, reqs, cfg, engine.eos_ids, decode, refs)
    res["stored"] = str(store_calibration(engine.runner.fingerprint, res, root))
    if cfg.mode in FUSED_MODES:  # a request without fused contexts runs blend: calibrate that too
        res["fallback"] = calibrate(engine.blender, plain, replace(cfg, mode=UNFUSED_MODE), engine.eos_ids, decode,
                                    refs)
        store_calibration(engine.runner.fingerprint, res["fallback"], root)
    if critical:
        from chunkcache.blend.qcfuse_profile import profile_critical_layers, store_profile

        prof = profile_critical_layers(engine.runner, reqs)
        store_profile(engine.runner, prof, root)
        res["critical_layers"] = list(prof.critical)
    for one in (res, res.get("fallback")):
        if one is not None:
            _report(one, res["stored"])
    return res


def _report(res: dict, stored: str) -> None:
    c = res["config"]
    name = calibration_key(res["mode"], c.get("decode_correction", 0), c.get("decode_correction_steps", 0))
    for row in res["rows"]:
        print(f"{name} ratio {row['recompute_ratio']:.2f}: agreement F1 {row['agreement_f1']:.3f}  "
              f"KL {row['tf_kl_mean']:.4f}  top-1 {row['tf_top1_agreement']:.3f}")
    verdict = "meets" if res["met"] else "no ratio tried meets"
    print(f"{name} on {res['n']} examples: {verdict} the target; stored recompute_ratio "
          f"{res['recompute_ratio']} for model {res['fingerprint']} in {stored}", flush=True)


def register(sub, flags) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser("calibrate", parents=[flags],
                       help="per-model quality gate: store the smallest recompute ratio meeting a target")
    p.add_argument("--data", default=None, help='JSON list of {"chunks": [...], "question": ...} (or MuSiQue '
                                                "format); default: the bundled MuSiQue examples (about 6K tokens each)")
    p.add_argument("--limit", type=positive, default=4, help="examples used")
    p.add_argument("--mode", default=DEFAULT_MODE, choices=MODES)
    p.add_argument("--ratios", type=ratios, default=[0.05, 0.1, 0.15, 0.2, 0.3, 0.5])
    p.add_argument("--target-agreement", type=ratio, default=0.95, help="mean answer token F1 vs full prefill")
    p.add_argument("--target-kl", type=float, default=None, help="mean teacher-forced KL not to exceed")
    p.add_argument("--max-new", type=positive, default=16)
    p.add_argument("--decode-correction", type=int, default=0, metavar="K",
                   help="decode every answer with this correction (K prompt tokens recomputed per step) and store "
                        "the ratio for requests that use the same K (default 0: none)")
    p.add_argument("--decode-correction-steps", type=int, default=0, metavar="S",
                   help="the same correction, finishing within S decode steps (instead of --decode-correction)")
    p.add_argument("--critical-layers", action="store_true", help="also profile qcfuse's critical layers")
    p.add_argument("--json", default=None, help="write the full result here")
    p.set_defaults(func=cmd_calibrate)
