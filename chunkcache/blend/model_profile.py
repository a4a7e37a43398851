"""What was measured about one model, kept per model fingerprint: a small private JSON file.

Two things are measured per model and reused by every later request on it:
  critical_layers  qcfuse's profiled layers (blend/qcfuse.py `profile_critical_layers`);
  calibrated       per mode (and decode correction, `calibration_key`), the recompute ratio `chunkcache
                   calibrate` picked for a quality target (bench/calibrate.py); BlendConfig(calibrated=True)
                   asks for the one of the mode that runs.
The file is <cache dir>/profiles/<fingerprint>.json ($CHUNKCACHE_DIR, else ~/.cache/chunkcache), in a
directory only this user can write (as the kernel cache): a profile someone else planted is not read.
The package ships the critical layers of its default model (chunkcache/data/profiles/<fingerprint>.json,
`shipped_profile`): a user's own profile of the same model takes precedence.
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path

from chunkcache.blend.config import DEFAULT_MODE, rule_revision
from chunkcache.kernels._cpp import UnsafeCacheDir, private_dir
from chunkcache.store.config import default_cache_dir

log = logging.getLogger(__name__)


def profile_path(fingerprint: str, root: str | Path | None = None) -> Path:
    """The profile file of a model fingerprint under root (default: the cache dir's `profiles`)."""
    if not fingerprint or any(c in fingerprint for c in "/\\."):
        raise ValueError(f"fingerprint {fingerprint!r} is not a model fingerprint")
    base = Path(root) if root is not None else Path(default_cache_dir()).expanduser() / "profiles"
    return base / f"{fingerprint}.json"


def read_profile(fingerprint: str, root: str | Path | None = None) -> dict:
    """The stored profile ({} when none, unreadable, or in a directory others can write)."""
    path = profile_path(fingerprint, root)
    if not path.exists():
        return {}
    try:
        private_dir(path.parent)
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnsafeCacheDir) as err:
        log.warning("model profile %s not used (%s)", path, err)
        return {}
    return data if isinstance(data, dict) and data.get("fingerprint") == fingerprint else {}


@cache
def shipped_profile(fingerprint: str) -> dict:
    """The profile the package ships for this fingerprint ({} when none): measured on the default model. Read
    once per fingerprint (package data does not change while running); callers must not mutate it."""
    path = Path(__file__).resolve().parent.parent / "data" / "profiles" / f"{fingerprint}.json"
    profile_path(fingerprint)  # validates the fingerprint as a file name
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if data.get("fingerprint") == fingerprint else {}


def update_profile(fingerprint: str, root: str | Path | None = None, **fields) -> Path:
    """Merge `fields` into the profile (atomic replace) and return its path."""
    path = profile_path(fingerprint, root)
    private_dir(path.parent)
    data = read_profile(fingerprint, root)
    data.update(fields, fingerprint=fingerprint)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def calibrations(fingerprint: str, root: str | Path | None = None) -> dict[str, dict]:
    """The stored calibrations of this model by mode ({} when none). A profile written before calibrations
    were kept per mode holds one, under its config's mode."""
    cal = read_profile(fingerprint, root).get("calibrated")
    if not isinstance(cal, dict):
        return {}
    if "recompute_ratio" in cal:  # the older layout: one calibration
        return {str(cal.get("config", {}).get("mode", "blend")): cal}
    return {m: c for m, c in cal.items() if isinstance(c, dict)}


def calibration_key(mode: str, decode_correction: int = 0, decode_correction_steps: int = 0) -> str:
    """The key a calibration is stored under: the mode, and the decode correction it was measured with if any
    (K tokens per step, or within S steps: BlendConfig.decode_correction, decode_correction_steps)."""
    if decode_correction_steps:
        return f"{mode}:decode_correction_steps={decode_correction_steps}"
    return f"{mode}:decode_correction={decode_correction}" if decode_correction else mode


def calibrated_ratio(fingerprint: str, root: str | Path | None = None, mode: str = DEFAULT_MODE,
                     decode_correction: int = 0, decode_correction_steps: int = 0) -> float:
    """The recompute ratio calibrated for this model in `mode` (the mode that runs: a fused-mode request without
    fused contexts runs blend, BlendRequest.runs); ValueError naming the fix when none is stored, or when the stored
    one was measured under an older selection rule of the mode (its "rule", 1 when absent: config.RULE_REVISIONS).
    With a decode correction (K or S), the ratio calibrated with that correction if one is stored, else the mode's own:
    measured without the correction, which only recomputes more, so it errs on the side of recomputing."""
    stored = calibrations(fingerprint, root)
    key = calibration_key(mode, decode_correction, decode_correction_steps)
    cal = stored.get(key if key in stored else mode, {})
    cmd = f"chunkcache calibrate --mode {mode}"
    if not isinstance(cal.get("recompute_ratio"), (int, float)):
        raise ValueError(f"calibrated: no recompute ratio is calibrated for mode {mode!r} of model {fingerprint} "
                         f"(run `{cmd}` first, or give recompute_ratio)")
    stored, current = cal.get("rule", 1), rule_revision(mode)
    if stored != current:
        raise ValueError(f"calibrated: the ratio stored for mode {mode!r} of model {fingerprint} was measured under "
                         f"its selection rule {stored}, and the mode now runs rule {current} "
                         f"(run `{cmd}` again, or give recompute_ratio)")
    return float(cal["recompute_ratio"])
