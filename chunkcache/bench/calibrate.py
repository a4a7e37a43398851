"""`chunkcache calibrate`: a per-model quality gate. Re-positioned KV is an approximation whose error depends on
the model; this measures it for the model at hand and stores the smallest recompute ratio that meets a target.

On a small sample (the bundled MuSiQue examples, or the user's own {"chunks": [...], "question": ...} list)
the mode (default: the default mode) runs at every ratio tried, next to full prefill on the same token ids:
  agreement  token F1 of the mode's greedy answer against full prefill's (1.0 when both are empty);
  KL         teacher-forced KL(full || mode) over full prefill's answer tokens, and top-1 agreement.
The picked ratio is the smallest whose mean agreement >= target_agreement (and mean KL <= target_kl when set);
when none meets the target, 1.0 (everything recomputed: exact) is stored and `met` is false. It is stored
under the model's fingerprint and the mode that ran, with that mode's rule revision (blend/model_profile.py: a
fused mode over requests without fused contexts runs blend; a ratio stored under an older rule is refused).
With decode_correction=K every answer is decoded with that correction (runner/decode.py), and the ratio is stored
apart from the mode's uncorrected one (model_profile.calibration_key): requests with the same K use it.
BlendConfig(calibrated=True), the server's `calibrated` request field and `chunkcache ask --calibrated` then use
the ratio of the mode each request runs. `chunkcache calibrate` in a fused mode calibrates its fallback, blend,
on the same sample too.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from chunkcache.bench.json_file import read_json
from chunkcache.bench.metrics import teacher_forced, token_f1
from chunkcache.bench.musique import DEFAULT_DATA, load_examples, passage_text
from chunkcache.bench.teacher_forcing import greedy, tf_logits
from chunkcache.blend.blender import Blender
from chunkcache.blend.config import DEFAULT_MODE, BlendConfig, rule_revision
from chunkcache.blend.model_profile import calibration_key, calibrations, update_profile
from chunkcache.blend.request import BlendRequest

DEFAULT_RATIOS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class CalibrationConfig:
    """mode: the mode calibrated; ratios: tried, increasing; target_agreement: mean answer token F1 vs full
    prefill to reach; target_kl: mean teacher-forced KL not to exceed (None: not checked); max_new: answer
    tokens generated per example; decode_correction: K prompt tokens recomputed per decode step (0: none), or
    decode_correction_steps: the same within S steps, as the requests that will use the ratio run."""

    mode: str = DEFAULT_MODE
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    target_agreement: float = 0.95
    target_kl: float | None = None
    max_new: int = 16
    decode_correction: int = 0
    decode_correction_steps: int = 0

    def __post_init__(self) -> None:
        blend = BlendConfig(mode=self.mode, decode_correction=self.decode_correction,  # names a bad mode or K
                            decode_correction_steps=self.decode_correction_steps)
        if not blend.recomputes:
            raise ValueError(f"mode: {self.mode!r} has no recompute ratio to calibrate")
        if not self.ratios or list(self.ratios) != sorted(set(self.ratios)) \
                or not all(0.0 <= r <= 1.0 for r in self.ratios):
            raise ValueError(f"ratios must be increasing values in [0, 1], got {self.ratios}")
        if not 0.0 <= self.target_agreement <= 1.0:
            raise ValueError(f"target_agreement must be in [0, 1], got {self.target_agreement}")
        if self.target_kl is not None and self.target_kl < 0:
            raise ValueError(f"target_kl must be >= 0, got {self.target_kl}")
        if self.max_new < 1:
            raise ValueError(f"max_new must be >= 1, got {self.max_new}")


def load_sample(path: str | Path | None = None, limit: int | None = 8) -> list[tuple[list[str], str]]:
    """(chunks, question) pairs: the bundled MuSiQue examples (path None), or a JSON list of
    {"chunks": [str, ...], "question": str} (MuSiQue's own format is accepted too)."""
    data = read_json(path) if path is not None else load_examples(DEFAULT_DATA)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of examples")
    out = []
    for i, ex in enumerate(data[:limit] if limit else data):
        if not isinstance(ex, dict):
            raise ValueError(f"{path}: example {i} is not an object")
        chunks = [passage_text(c) for c in ex["ctxs"]] if "ctxs" in ex else ex.get("chunks")
        if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) and c.strip() for c in chunks):
            raise ValueError(f"{path}: example {i}: chunks must be a non-empty list of non-empty strings")
        if not isinstance(ex.get("question"), str) or not ex["question"].strip():
            raise ValueError(f"{path}: example {i}: question must be a non-empty string")
        out.append((chunks, ex["question"]))
    return out


def _ids_text(ids: list[int]) -> str:
    return " ".join(map(str, ids))


Reference = tuple[list[int], torch.Tensor, str]  # full prefill's answer ids, its teacher-forcing logits, its text


def references(blender: Blender, requests: list[BlendRequest], max_new: int, eos_ids: set[int] | None = None,
               text: Callable[[list[int]], str] = _ids_text) -> list[Reference]:
    """Full prefill's greedy answer per request, what every mode and ratio is measured against. Fused contexts
    do not change it: full prefill reads only the token ids."""
    r, eos, out = blender.runner, eos_ids or set(), []
    for req in requests:
        full = blender.prefill(req, BlendConfig(mode="full"), reserve=max_new)
        n = full.cache.length
        answer = greedy(r, full.cache, full.logits, max_new, eos)
        full.cache.truncate(n)
        out.append((answer, tf_logits(r, full.cache, full.logits, answer), text([t for t in answer if t not in eos])))
    return out


def calibrate(blender: Blender, requests: list[BlendRequest], cfg: CalibrationConfig = CalibrationConfig(),
              eos_ids: set[int] | None = None, text: Callable[[list[int]], str] = _ids_text,
              refs: list[Reference] | None = None) -> dict:
    """Measure cfg.mode at every ratio on `requests` against full prefill and pick the ratio (module doc).
    text: answer ids -> text for the token F1 (default: the ids themselves, for tokenizer-less models). refs:
    `references` of these requests' token ids (computed when None), to share between modes."""
    if not requests:
        raise ValueError("requests: the calibration sample is empty")
    runs = {req.runs(cfg.mode) for req in requests}
    if len(runs) > 1:
        raise ValueError(f"requests: mode {cfg.mode!r} would run as {sorted(runs)} (only some requests carry fused "
                         "contexts): calibrate one mode at a time")
    if refs is None:
        refs = references(blender, requests, cfg.max_new, eos_ids, text)
    if len(refs) != len(requests):
        raise ValueError(f"refs: {len(refs)} references for {len(requests)} requests")
    r, eos = blender.runner, eos_ids or set()
    per_ratio: dict[float, list[tuple[float, float, float]]] = {x: [] for x in cfg.ratios}
    for req, (answer, ref, want) in zip(requests, refs, strict=True):
        for ratio in cfg.ratios:
            bc = BlendConfig(mode=cfg.mode, recompute_ratio=ratio, decode_correction=cfg.decode_correction,
                             decode_correction_steps=cfg.decode_correction_steps)
            res = blender.prefill(req, bc, reserve=cfg.max_new)
            top1, kl = teacher_forced(ref, tf_logits(r, res.cache, res.logits, answer, correction=res.correction))
            got = text([t for t in greedy(r, res.cache, res.logits, cfg.max_new, eos, res.correction)
                        if t not in eos])
            agree = token_f1(got, want) if want.strip() else float(got.strip() == want.strip())
            per_ratio[ratio].append((agree, kl, top1))
    rows = [{"recompute_ratio": x, "agreement_f1": statistics.fmean(a for a, _, _ in v),
             "tf_kl_mean": statistics.fmean(k for _, k, _ in v),
             "tf_top1_agreement": statistics.fmean(t for *_, t in v)} for x, v in per_ratio.items()]
    ok = [row for row in rows if row["agreement_f1"] >= cfg.target_agreement
          and (cfg.target_kl is None or row["tf_kl_mean"] <= cfg.target_kl)]
    mode = runs.pop()
    return {"fingerprint": r.fingerprint, "mode": mode, "rule": rule_revision(mode), "config": asdict(cfg),
            "n": len(requests), "rows": rows, "met": bool(ok),
            "recompute_ratio": ok[0]["recompute_ratio"] if ok else 1.0}


def store_calibration(fingerprint: str, result: dict, root: str | Path | None = None) -> Path:
    """Store the picked ratio (and what it was measured on) in the model's profile, under the mode that ran
    (result["mode"]), beside the other modes' calibrations; returns the file."""
    cal = {k: result[k] for k in ("recompute_ratio", "met", "n", "rows", "config", "rule")}
    c = result["config"]
    key = calibration_key(result["mode"], c.get("decode_correction", 0), c.get("decode_correction_steps", 0))
    return update_profile(fingerprint, root, calibrated={**calibrations(fingerprint, root), key: cal})
