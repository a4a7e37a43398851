"""Per-request blending options."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("full", "prefix", "naive", "cacheblend", "adaptive", "epic", "ape", "query", "prophet", "prophet2", "qcfuse",
         "fusion", "fusionqc", "blend")
DEFAULT_MODE = "fusionqc"  # chosen by measurement on the dev splits (README, BENCHMARKS.md)
FUSED_MODES = ("fusion", "fusionqc")  # modes that place each chunk's fused entry (BlendRequest.fused; blend/fusion.py)
UNFUSED_MODE = "blend"  # what a fused mode runs on a request without fused contexts (the best plain-entry mode)
RATIO_FREE_MODES = ("full", "prefix", "naive", "ape")  # modes whose cost does not depend on recompute_ratio
SELECTIONS = ("deviation", "random", "attention", "attention_deviation")
DEVIATION_ON = ("k", "v", "kv")
ALIASES = {"dense": "full"}  # the agents' old name of full prefill
KVCOMM_PREFIX = "kvcomm"  # "kvcomm" = naive + KVCOMM offsets; "kvcomm+<mode>" = <mode> over KVCOMM offsets
# what `bench agents` compares by default
AGENT_MODES = ("full", "prefix", "kvcomm", "blend", "kvcomm+blend", "kvcomm+epic")
# A mode's selection rule, numbered from 1: bumped when what the mode recomputes at a given ratio changes, so that a
# ratio `chunkcache calibrate` stored under the older rule is refused instead of silently reused (model_profile.py).
RULE_REVISIONS = {"fusionqc": 2}  # 2: blend's chunk heads pinned (2026-12-05)


def rule_revision(mode: str) -> int:
    """The current selection rule of `mode` (1 unless RULE_REVISIONS says otherwise)."""
    return RULE_REVISIONS.get(mode, 1)


@dataclass(frozen=True)
class BlendConfig:
    """How one request reuses chunk KV.

    mode: one of MODES (see blend/blender.py and blend/modes.py for what each one recomputes).
    recompute_ratio: fraction of context (chunk) tokens recomputed from the check layer on
        (cacheblend, query, prophet, prophet2, qcfuse, fusion, fusionqc, blend: exactly this many; adaptive: at
        most this many; epic with epic_k=0: k per chunk derived from it; ape: unused).
    calibrated: use the ratio `chunkcache calibrate` stored for this model (blend/model_profile.py) instead of
        recompute_ratio; a model never calibrated is an error naming the fix.
    check_layers: layers where fresh K/V are compared with cached K/V. Layers before the first are
        computed for every context token; each check layer narrows the set (gradual filtering), the
        last one down to the budget.
    deviation_on: compare K, V or both (each normalised by its mean, then summed).
    adaptive_mass: adaptive mode keeps the smallest set covering this fraction of the deviation mass.
    selection: deviation (CacheBlend: measured at the check layers); attention (query-aware: the
        tokens the question suffix attends most over the naive merged cache, chosen before layer 0,
        so no layer is computed for every context token); attention_deviation (attention mass x
        deviation at the check layer); random (a baseline at the same budget). Used by cacheblend
        and adaptive; the other modes fix their own selection.
    epic_k: epic mode recomputes the first epic_k tokens of every chunk (EPIC/LegoLink, k <= 32 in the
        paper; 16 here). 0: k = recompute_ratio * context tokens / chunks (budget-matched, for sweeps).
    sink_tokens: kvcomm+epic and kvcomm+blend recompute at most this many tokens at the start of each
        anchor-estimated segment (its offset is already estimated; chunk-path segments get the mode's k).
    ape_temperature, ape_scale: APE's attention temperature T and scaling factor S on the attention
        from the suffix to the context tokens (APE repo default 0.9 / 0.9; T=S=1 is naive).
    critical_layers: qcfuse's (and fusionqc's) layers where the question's attention scores the context (empty:
        the model's profiled layers, else the fallback in blend/qcfuse.py).
    score_layers: blend's layers where the suffix's attention over the naive cache scores the context (empty:
        every layer); the scoring pass stops after the last of them.
    anchor_ratio, anchor_sinks: qcfuse's (and fusionqc's) anchors per chunk: anchor_ratio of its tokens, the first
        anchor_sinks of them always (QCFuse's release: 0.15 and 4).
    decode_correction: K prompt tokens recomputed per decode step (0: none), after KVShare (arXiv 2503.16525): every
        position after the exact prefix, K per step in position order, then the tokens generated so far, after which
        the cache is exactly full prefill's (runner/decode.py DecodeCorrection). TTFT is unchanged; the first
        ceil(n / K) steps cost more.
    decode_correction_steps: the same correction, with K chosen per request so that it finishes within S decode
        steps: K = ceil(pending / S) (0: K is decode_correction). One of the two, not both: K bounds each step's
        cost, S bounds how many tokens are decoded from the approximate cache, whatever the prompt's length.
    correction_gate: with a correction, a decode step whose top next-token probability is below this while prompt
        tokens are still pending recomputes all of them at once, so that token is chosen from full prefill's logits
        (0: never; the first token is not gated). Costs time only on the requests where it fires.
    kvcomm: place the request's anchored placeholders from the KVCOMM anchor estimate (base + weighted
        anchor offsets; blend/anchoring.py) before the mode's selection runs. Named "kvcomm" (with mode
        naive: nothing recomputed) or "kvcomm+<mode>" (see `named`).
    """

    mode: str = DEFAULT_MODE
    recompute_ratio: float = 0.15
    check_layers: tuple[int, ...] = (1,)
    deviation_on: str = "kv"
    adaptive_mass: float = 0.5
    selection: str = "deviation"
    seed: int = 0
    epic_k: int = 16
    sink_tokens: int = 4
    ape_temperature: float = 0.9
    ape_scale: float = 0.9
    kvcomm: bool = False
    calibrated: bool = False
    critical_layers: tuple[int, ...] = ()
    anchor_ratio: float = 0.15
    anchor_sinks: int = 4
    score_layers: tuple[int, ...] = ()
    decode_correction: int = 0
    decode_correction_steps: int = 0
    correction_gate: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.recompute_ratio <= 1.0:
            raise ValueError(f"recompute_ratio must be in [0, 1], got {self.recompute_ratio}")
        layers = list(self.check_layers)
        if not layers or layers != sorted(set(layers)) or layers[0] < 1:
            raise ValueError(f"check_layers must be increasing layer indices >= 1, got {self.check_layers}")
        if self.deviation_on not in DEVIATION_ON:
            raise ValueError(f"deviation_on must be one of {DEVIATION_ON}, got {self.deviation_on!r}")
        if not 0.0 < self.adaptive_mass <= 1.0:
            raise ValueError(f"adaptive_mass must be in (0, 1], got {self.adaptive_mass}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.epic_k < 0 or self.sink_tokens < 0:
            raise ValueError(f"epic_k and sink_tokens must be >= 0, got {self.epic_k}, {self.sink_tokens}")
        if not (self.ape_temperature > 0 and self.ape_scale > 0):
            raise ValueError(f"ape_temperature and ape_scale must be > 0, "
                             f"got {self.ape_temperature}, {self.ape_scale}")
        if list(self.critical_layers) != sorted(set(self.critical_layers)) or any(x < 0 for x in self.critical_layers):
            raise ValueError(f"critical_layers must be increasing layer indices >= 0, got {self.critical_layers}")
        if list(self.score_layers) != sorted(set(self.score_layers)) or any(x < 0 for x in self.score_layers):
            raise ValueError(f"score_layers must be increasing layer indices >= 0, got {self.score_layers}")
        if not 0.0 < self.anchor_ratio <= 1.0 or self.anchor_sinks < 0:
            raise ValueError(f"anchor_ratio must be in (0, 1] and anchor_sinks >= 0, "
                             f"got {self.anchor_ratio}, {self.anchor_sinks}")
        if self.decode_correction < 0:
            raise ValueError(f"decode_correction must be >= 0 tokens per decode step, got {self.decode_correction}")
        if self.decode_correction_steps < 0:
            raise ValueError(f"decode_correction_steps must be >= 0 decode steps, got {self.decode_correction_steps}")
        if self.decode_correction and self.decode_correction_steps:
            raise ValueError("decode_correction and decode_correction_steps: give one, not both "
                             f"(got {self.decode_correction} and {self.decode_correction_steps})")
        if not 0.0 <= self.correction_gate <= 1.0:
            raise ValueError(f"correction_gate must be a probability in [0, 1], got {self.correction_gate}")
        if self.correction_gate and not self.corrects:
            raise ValueError(f"correction_gate {self.correction_gate} gates a decode-time correction: give "
                             "decode_correction or decode_correction_steps too")
        if self.kvcomm and not self.places_kv:
            raise ValueError(f"kvcomm places estimated KV; mode {self.mode!r} places none")

    @property
    def name(self) -> str:
        """The mode's name as `named` reads it: full, blend, kvcomm, kvcomm+blend, ..."""
        if not self.kvcomm:
            return self.mode
        return KVCOMM_PREFIX if self.mode == "naive" else f"{KVCOMM_PREFIX}+{self.mode}"

    @property
    def places_kv(self) -> bool:
        """Whether cached KV is placed after the exact prefix (every mode but full and prefix)."""
        return self.mode not in ("full", "prefix")

    @property
    def recomputes(self) -> bool:
        """Whether the mode recomputes context tokens past the first layers (a selector runs)."""
        return self.mode not in ("full", "prefix", "naive", "ape")

    @property
    def corrects(self) -> bool:
        """Whether decode recomputes the placed KV (decode_correction or decode_correction_steps)."""
        return bool(self.decode_correction or self.decode_correction_steps)

    def correction_per_step(self, pending: int) -> int:
        """K, the prompt tokens recomputed per decode step when `pending` follow the exact prefix (>= 1)."""
        if self.decode_correction_steps:
            return max(1, math.ceil(pending / self.decode_correction_steps))
        return self.decode_correction

    @classmethod
    def named(cls, name: str, **kw) -> "BlendConfig":
        """The config of a mode name: one of MODES, an alias (dense = full), kvcomm, or kvcomm+<mode>."""
        name = ALIASES.get(name, name)
        if name == KVCOMM_PREFIX:
            return cls(mode="naive", kvcomm=True, **kw)
        if name.startswith(KVCOMM_PREFIX + "+"):
            return cls(mode=name[len(KVCOMM_PREFIX) + 1:], kvcomm=True, **kw)
        return cls(mode=name, **kw)


def check_mode_name(name: str) -> str:
    """`name` if BlendConfig.named accepts it; else ValueError listing the names."""
    try:
        BlendConfig.named(name)
    except ValueError:
        raise ValueError(f"unknown mode {name!r}: mode must be one of {MODES}, {tuple(ALIASES)}, "
                         f"{KVCOMM_PREFIX} or {KVCOMM_PREFIX}+<mode>") from None
    return name
