"""Which sparse-query attention implementation runs: measured on this machine, for this model's shapes.

Under kernels=auto, `AttentionDispatch.build` times every candidate (the torch reference; the C++ kernel
on the CPU when it builds and takes the dtype; Triton on CUDA when it imports) on a few shape classes
(query density x context length) with the model's heads, head_dim, dtype, device and threads, and keeps
the fastest per class. On the CPU it first times the C++ kernel's builds against each other (`-march=native`
and the highest portable level this CPU runs) on the longest blending class and keeps the faster for every
class: a compiler that tunes native code for a CPU it misreads (GCC 12 takes Zen 4 for Zen 3) can lose more
than the ISA gains. The decision is cached as JSON next to the kernel builds, keyed by the CPU (or GPU), the
kernel builds, the compiler, the torch version and the shape, so it is measured once per machine.
kernels=torch|cpp|triton forces one implementation. Plans no candidate but the reference can take
(a causal square: full prefill; fewer than MIN_QUERIES: a question suffix or decode) take the reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from chunkcache.kernels import _cpp
from chunkcache.kernels._triton import triton_available
from chunkcache.kernels.sparse_attention import (AttentionPlan, cpu_kernel_applies, cpu_kernel_threads,
                                                 plan_sparse_attention, sparse_query_attention)
from chunkcache.kernels.sparse_attention_bf16 import bf16_kernel_available, sparse_query_attention_bf16_cpu

MIN_QUERIES = 64  # below this the reference (SDPA over a few rows) runs: nothing to gain, threads idle
REPEATS = 5  # timed rounds per class (after one warm-up), candidates interleaved in each round
MARGIN = 1.03  # a candidate replaces torch only if its median paired speed-up over torch is at least this
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShapeClass:
    """A representative sparse-query attention call: `queries` positions among `kv_len` keys."""

    name: str
    kv_len: int
    queries: int
    contiguous: bool  # a chunk precomputed behind a prefix (the last `queries` positions) vs scattered

    @property
    def density(self) -> float:
        return self.queries / self.kv_len


SHAPE_CLASSES = (
    ShapeClass("sparse-short", 1024, 160, False),  # blending a short prompt at ~15%
    ShapeClass("sparse-long", 4096, 640, False),  # blending a long prompt at ~15%
    ShapeClass("sparse-xlong", 8192, 1228, False),  # blending a prompt near an 8K context (6K: nearer this than 4K)
    ShapeClass("dense-short", 640, 576, True),  # precomputing one passage behind the system prompt
    ShapeClass("dense-long", 2048, 1536, True),  # a long suffix or chunk behind a prefix
)
DENSE = 0.5  # plans with at least this share of positions as queries are dense


@dataclass(frozen=True)
class AttentionShape:
    """What the measurement depends on besides the machine."""

    n_heads: int
    n_kv: int
    head_dim: int
    dtype: str  # "float32", ...
    device: str  # "cpu", "cuda:0", ...
    threads: int
    max_positions: int


@dataclass
class Decision:
    choice: str
    ms: dict[str, float]  # candidate -> median milliseconds of one call
    speedup: dict[str, float] = field(default_factory=dict)  # candidate -> median paired speed-up over torch


@dataclass
class AttentionDispatch:
    """kernels: auto | torch | cpp | triton. decisions: shape class -> Decision (auto only).
    source: forced | measured | cached | single (one candidate, nothing to measure). cpp_march: the C++ build
    that "cpp" runs; cpp_builds: each build timed -> its median paired speed-up over native (auto only);
    cpp_threads: "openmp" (torch's pool) or "std::thread" for that build ("" when the C++ kernel is no candidate)."""

    kernels: str
    decisions: dict[str, Decision] = field(default_factory=dict)
    source: str = "forced"
    startup_s: float = 0.0
    isa: str = ""
    cpp_march: str = "native"
    cpp_builds: dict[str, float] = field(default_factory=dict)
    cpp_threads: str = ""
    max_positions: int = 0  # the model's context, which the classes were cut to (0: not cut)

    @classmethod
    def build(cls, kernels: str, shape: AttentionShape) -> "AttentionDispatch":
        """The dispatch for `shape`: forced, or (auto) loaded from the cache or measured now and cached."""
        isa = _isa(shape.device)
        if kernels != "auto":
            return cls(kernels, isa=isa, cpp_threads=(cpu_kernel_threads() or "") if kernels == "cpp" else "")
        t0 = time.perf_counter()
        cands = candidates(shape)
        if len(cands) == 1:
            return cls("auto", {c.name: Decision(cands[0], {}) for c in SHAPE_CLASSES}, "single", 0.0, isa)
        builds = cpp_builds() if "cpp" in cands else []
        path = _cache_path(shape, cands, builds)
        private = _private(path)
        cached = _read(path) if private else None
        source = "cached"
        if cached is None:
            classes = _classes(shape)
            march, build = measure_builds(shape, classes, builds)
            decisions = {c.name: measure(shape, c, cands, march) for c in classes}
            cached = (decisions, march, build)
            if private:
                _write(path, *cached)
            source = "measured"
        decisions, march, build = cached
        if march != "native" and not cpu_kernel_applies(*_probe(shape), march):  # loads it now, not in a request
            log.warning("the cached C++ build %s does not load here; running native", march)
            march = "native"
        out = cls("auto", decisions, source, time.perf_counter() - t0, isa, march, build,
                  (cpu_kernel_threads(march) or "") if "cpp" in cands else "", shape.max_positions)
        log.info("%s (%s in %.2f s)", out.describe(), source, out.startup_s)
        return out

    def choose(self, plan: AttentionPlan) -> str:
        """The implementation for one call with this plan."""
        return self.choose_for(plan.q_positions.numel(), plan.q_end, plan.causal_square or plan.temper is not None)

    def choose_for(self, m: int, q_end: int, reference_only: bool = False) -> str:
        """The implementation for m queries ending at position q_end - 1; reference_only: a causal square (SDPA's
        causal kernel) or APE's tempered attention, which only the reference computes."""
        if reference_only and self.kernels != "triton":
            return "torch"
        if self.kernels != "auto":
            return self.kernels
        if m < MIN_QUERIES:
            return "torch"
        name = classify(m, q_end, list(self.decisions), self.max_positions)
        return "torch" if name is None else self.decisions[name].choice

    def summary(self) -> dict:
        """JSON-ready: the choice per class with its timings and speed-up over torch."""
        return {"kernels": self.kernels, "source": self.source, "startup_s": round(self.startup_s, 3),
                "isa": self.isa, "cpp_march": self.cpp_march, "cpp_builds": self.cpp_builds,
                "cpp_threads": self.cpp_threads,
                "classes": {n: {**asdict(d), "speedup_vs_torch": _speedup(d)} for n, d in self.decisions.items()}}

    def describe(self) -> str:
        """One line for people: 'attention: C++ kernel, 1.31x torch on this machine (sparse-long)'."""
        names = {"torch": "torch reference", "cpp": "C++ kernel", "triton": "Triton kernel"}
        if self.kernels != "auto":
            return f"attention: {names[self.kernels]} (forced by kernels={self.kernels})"
        if self.source == "single":
            return "attention: torch reference (no other implementation takes this model here)"
        if not self.decisions:
            return "attention: torch reference (the model's context leaves no class worth measuring)"
        key = "sparse-long" if "sparse-long" in self.decisions else next(iter(self.decisions))
        d = self.decisions[key]
        others = ", ".join(f"{names[n]} {x:.2f}x torch" for n, x in d.speedup.items() if n != "torch")
        if self.cpp_march != "native":
            others += f" ({self.cpp_march} build, {self.cpp_builds[self.cpp_march]:.2f}x native)"
        threads = f"; C++ threads: {self.cpp_threads}" if self.cpp_threads else ""
        return (f"attention: {names[d.choice]} on this machine ({self.isa}, {key}: {others}); "
                + ", ".join(f"{n}: {x.choice}" for n, x in self.decisions.items()) + threads)


def _speedup(d: Decision) -> float | None:
    if d.choice in d.speedup:
        return d.speedup[d.choice]
    return d.ms["torch"] / d.ms[d.choice] if d.ms.get("torch") and d.ms.get(d.choice) else None


def candidates(shape: AttentionShape) -> list[str]:
    """Implementations that can take this shape here (the torch reference always)."""
    out = ["torch"]
    if shape.device == "cpu" and cpu_kernel_applies(*_probe(shape)):
        out.append("cpp")
    if shape.device.startswith("cuda") and triton_available():
        out.append("triton")
    return out


def _probe(shape: AttentionShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of the shape's head_dim and dtype on the CPU, for asking whether the C++ kernel takes them."""
    probe = torch.empty(1, 1, shape.head_dim, dtype=getattr(torch, shape.dtype))
    return probe, probe, probe


def cpp_builds() -> list[str]:
    """The C++ builds to time against each other: native and the highest portable level this CPU runs. Names
    only: nothing is built until `measure_builds` times them, so a start that reads its decision builds none."""
    return ["native", *_cpp.runnable_isas()[-1:]]


def _classes(shape: AttentionShape) -> list[ShapeClass]:
    """The shape classes that fit the model's context (a short-context model measures shorter prompts; a class
    that no longer leaves room for MIN_QUERIES scattered queries is dropped: those calls take the reference; so is
    one cut to the length of a shorter class of its density group, whose calls that class then takes)."""
    out: list[ShapeClass] = []
    for c in SHAPE_CLASSES:
        n = min(c.kv_len, shape.max_positions)
        q = max(MIN_QUERIES, int(c.density * n))
        cut_to_another = any(o.kv_len == n and (o.density >= DENSE) == (c.density >= DENSE) for o in out)
        if q < n and not cut_to_another:
            out.append(ShapeClass(c.name, n, q, c.contiguous))
    return out


def classify(m: int, q_end: int, names: list[str], max_positions: int = 0) -> str | None:
    """The nearest measured class to a call of m queries ending at q_end (same density group, log length of the
    class as measured: cut to max_positions when given); None when that group was not measured."""
    dense = m / max(q_end, 1) >= DENSE
    group = [c for c in SHAPE_CLASSES if (c.density >= DENSE) == dense and c.name in names]
    length = {c.name: min(c.kv_len, max_positions or c.kv_len) for c in group}
    return min(group, key=lambda c: abs(math.log(max(q_end, 1) / length[c.name]))).name if group else None


def query_positions(kv_len: int, m: int, contiguous: bool, gen: torch.Generator) -> torch.Tensor:
    """m increasing query positions [m] in [0, kv_len) on the CPU, the last one kv_len - 1 (the question's last
    token): the prompt's last m (a suffix behind a prefix), or m - 1 drawn from gen plus the last (a blend)."""
    if contiguous:
        return torch.arange(kv_len - m, kv_len)
    head = torch.randperm(kv_len - 1, generator=gen)[:m - 1].sort().values
    return torch.cat((head, torch.tensor([kv_len - 1])))


def _example(shape: AttentionShape, c: ShapeClass, gen: torch.Generator):
    dev, dtype = torch.device(shape.device), getattr(torch, shape.dtype)
    pos = query_positions(c.kv_len, c.queries, c.contiguous, gen)
    q = torch.randn(shape.n_heads, c.queries, shape.head_dim, generator=gen).to(dev, dtype)
    k, v = (torch.randn(shape.n_kv, c.kv_len, shape.head_dim, generator=gen).to(dev, dtype) for _ in range(2))
    return q, k, v, plan_sparse_attention(pos.to(dev), c.kv_len, dtype=dtype)


def timer(fn: Callable[[], object], cuda: bool) -> Callable[[], float]:
    """A callable that runs fn once and returns its milliseconds (the device synchronised around it on CUDA)."""
    def run() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3
    return run


@torch.inference_mode()
def _rounds(shape: AttentionShape, c: ShapeClass, calls: dict[str, Callable[..., object]]) -> dict[str, list[float]]:
    """Milliseconds of each call(q, k, v, plan, scale) on class c: a warm-up each, then REPEATS rounds taking
    them in turn, so drift and a busy neighbour hit all alike."""
    q, k, v, plan = _example(shape, c, torch.Generator().manual_seed(0))
    scale = shape.head_dim ** -0.5
    threads = torch.get_num_threads()
    torch.set_num_threads(shape.threads)
    try:
        timers = {n: timer(lambda f=f: f(q, k, v, plan, scale), shape.device.startswith("cuda"))
                  for n, f in calls.items()}
        for t in timers.values():
            t()
        runs: dict[str, list[float]] = {n: [] for n in calls}
        for _ in range(REPEATS):
            for n, t in timers.items():
                runs[n].append(t())
    finally:
        torch.set_num_threads(threads)
    return runs


def _paired(runs: dict[str, list[float]], base: str) -> dict[str, float]:
    """Each entry's median over rounds of base's time / its time in the same round."""
    return {n: statistics.median(a / b for a, b in zip(runs[base], r, strict=True)) for n, r in runs.items()}


def measure_builds(shape: AttentionShape, classes: list[ShapeClass], builds: list[str]) -> tuple[str, dict[str, float]]:
    """The C++ build to run, and each build's median paired speed-up over native on the longest scattered class
    that fits (the longest prompts gain the most from the kernel; else the first class). Another build replaces
    native only if it is at least MARGIN faster; ("native", {}) with nothing to compare (one build, or only
    native builds here)."""
    builds = [m for m in builds if cpu_kernel_applies(*_probe(shape), m)]
    if len(builds) < 2 or not classes:
        return "native", {}
    c = max((x for x in classes if not x.contiguous), key=lambda x: x.kv_len, default=classes[0])
    calls = {m: (lambda *a, m=m: sparse_query_attention(*a, impl="cpp", march=m)) for m in builds}
    paired = {m: round(x, 4) for m, x in _paired(_rounds(shape, c, calls), "native").items()}
    best = max(paired, key=paired.get)
    return (best if paired[best] >= MARGIN else "native"), paired


def measure(shape: AttentionShape, c: ShapeClass, cands: list[str], march: str = "native") -> Decision:
    """Time each candidate (cpp: the `march` build) on class c, REPEATS paired rounds. A candidate's speed-up is
    the median over rounds of torch's time / its time in the same round; the best one wins if that is at least
    MARGIN, else torch."""
    calls = {n: (lambda *a, n=n: sparse_query_attention(*a, impl=n, march=march)) for n in cands}
    runs = _rounds(shape, c, calls)
    ms = {n: statistics.median(r) for n, r in runs.items()}
    paired = _paired(runs, "torch")
    best = max(paired, key=paired.get)
    return Decision(best if paired[best] >= MARGIN else "torch", {n: round(t, 4) for n, t in ms.items()},
                    {n: round(x, 4) for n, x in paired.items()})


def measure_bf16(shape: AttentionShape, march: str) -> float | None:
    """The bf16 C++ kernel's median paired speed-up over the fp32 C++ build `march` on the sparse-long class (cut
    to the model's context; else the longest scattered class), REPEATS rounds; None when it cannot run here
    (no AVX512-BF16 build, not an fp32 CPU model, no class)."""
    if shape.device != "cpu" or shape.dtype != "float32" or not bf16_kernel_available():
        return None
    classes = [c for c in _classes(shape) if not c.contiguous]
    if not classes or not cpu_kernel_applies(*_probe(shape), march):
        return None
    c = next((x for x in classes if x.name == "sparse-long"), max(classes, key=lambda x: x.kv_len))
    calls = {"cpp": lambda *a: sparse_query_attention(*a, impl="cpp", march=march),
             "bf16": lambda *a: sparse_query_attention_bf16_cpu(*a)}
    return round(_paired(_rounds(shape, c, calls), "cpp")["bf16"], 4)


def _isa(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else device
    flags = set(_cpp.cpu_flags().split())
    for name, need in (("avx512", {"avx512f"}), ("avx2", {"avx2", "fma"}), ("neon", {"asimd"})):
        if need <= flags:
            return name
    return platform.machine()


def _cache_path(shape: AttentionShape, cands: list[str], builds: list[str]):
    parts = [json.dumps(asdict(shape), sort_keys=True), torch.__version__, platform.machine(), _isa(shape.device),
             ",".join(cands), json.dumps([asdict(c) for c in SHAPE_CLASSES]), str(REPEATS), str(MARGIN)]
    if shape.device == "cpu":
        sos = [_cpp.so_path("sparse_attention_cpu", m) for m in builds or ["native"]]
        parts += [_cpp.cpu_flags(), *(so.name if so else "no-compiler" for so in sos)]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return _cpp.cache_dir() / f"dispatch-attention-{key}.json"


def _private(path) -> bool:
    try:
        _cpp.private_dir(path.parent)
        return True
    except (OSError, _cpp.UnsafeCacheDir) as e:
        log.warning("attention dispatch cache not used (%s)", e)
        return False


def _read(path) -> tuple[dict[str, Decision], str, dict[str, float]] | None:
    """(decisions, cpp_march, cpp_builds) as `_write` left them; None when absent or unreadable."""
    try:
        raw = json.loads(path.read_text())
        decisions = {n: Decision(d["choice"], {k: float(x) for k, x in d["ms"].items()},
                                 {k: float(x) for k, x in d.get("speedup", {}).items()})
                     for n, d in raw["classes"].items()}
        out = decisions, str(raw["cpp_march"]), {k: float(x) for k, x in raw["cpp_builds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    _cpp.touch(path)  # in use: _cpp.prune keeps it
    return out


def _write(path, decisions: dict[str, Decision], march: str, builds: dict[str, float]) -> None:
    """Atomic write into the private kernel cache, then the cache's unused entries pruned (_cpp.prune); a cache
    that cannot be written only costs a re-measure."""
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        raw = {"cpp_march": march, "cpp_builds": builds, "classes": {n: asdict(d) for n, d in decisions.items()}}
        tmp.write_text(json.dumps(raw, indent=1))
        os.replace(tmp, path)
        _cpp.prune(path.parent, keep=path)
    except OSError as e:
        log.warning("attention dispatch not cached (%s): it will be measured again at the next start", e)
