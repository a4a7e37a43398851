"""The decoder's linear layers computed in bfloat16 inside an fp32 model (EngineConfig.linear_dtype).

Applied from outside the model, as gpt-fast applies quantisation: each `nn.Linear` of the decoder layers is
swapped for a `Bf16Linear` holding a bf16 copy of its weight. Only the GEMMs change precision: their inputs are
rounded to bf16 and accumulated in fp32 by the backend, their outputs returned in fp32; embeddings, norms, the
residual stream, rotary embedding, attention, the KV cache and lm_head stay fp32. The swapped weights are bf16
in the state dict, so the model fingerprint, and with it every chunk key, differs from the fp32 engine's: the
two never share KV.

With `decode_linear_dtype="float32"` only the prefill's layers are bf16: they are a copy of the decoder layers
whose linears are swapped (its norms are copies; it holds no fp32 linear weight), and the model keeps its fp32 layers
for the decode steps and the decode-time correction. A correction then converges the cache to the fp32 model's
full prefill, so the answer pays bf16 only in the tokens decoded before it converges, while the prefill (the time
to first token) keeps the bf16 speed. The fp32 weights stay alongside: 1.5x the linears' memory.

Opt-in, because it changes answers (BENCHMARKS.md measures by how much), and taken only where it is measured
faster on the device at hand: CPUs without native bf16 (AVX512-BF16, AMX, or ARM's BF16) convert in software
and can run it slower than fp32.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_SPEEDUP = 1.2  # bf16 GEMMs must measure at least this much faster than fp32 to be taken
PROBE_ROWS = 128  # rows of the probe GEMM: a blended prefill's recompute (~100-250 rows) on HotpotQA
log = logging.getLogger(__name__)


class Bf16Linear(torch.nn.Module):
    """y [..., out] = x [..., in] W^T + b, computed in bfloat16 and returned in x's dtype."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))  # [out, in]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


@dataclass(frozen=True)
class LinearPrecision:
    """What the engine's decoder linear layers compute in, and why. asked: the config's linear_dtype;
    speedup: bf16 over fp32 on the probe GEMM (None when not measured); split: the prefill alone took bf16, the
    decode steps keep the model's fp32 layers."""

    dtype: str
    asked: str | None = None
    speedup: float | None = None
    split: bool = False

    @property
    def decode_dtype(self) -> str:
        """What the decode steps' linear layers compute in."""
        return "float32" if self.split else self.dtype

    @property
    def swapped(self) -> bool:
        """Whether the decoder's linear layers were replaced (bf16 asked and measured faster)."""
        return self.speedup is not None and self.dtype == "bfloat16"

    def describe(self) -> str:
        if self.speedup is None:
            return f"linear layers: {self.dtype}"
        verdict = "taken" if self.swapped else f"under {MIN_SPEEDUP}x, kept float32"
        scope = f"; decode in {self.decode_dtype}" if self.split else ""
        return (f"linear layers: {self.dtype} (bfloat16 asked, measured {self.speedup:.2f}x float32: {verdict})"
                f"{scope}")


def decoder_linears(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """(parent, attribute, module) of every nn.Linear inside the decoder layers (lm_head excluded)."""
    return [(parent, name, child) for layer in model.model.layers for parent in layer.modules()
            for name, child in parent.named_children() if isinstance(child, torch.nn.Linear)]


def probe_layer(linears: list[tuple[torch.nn.Module, str, torch.nn.Linear]]) -> torch.nn.Linear:
    """The layer the bf16 probe times: the widest of `decoder_linears` (an MLP projection)."""
    return max((m for _, _, m in linears), key=lambda m: m.weight.numel())


def bf16_speedup(linear: torch.nn.Linear, rounds: int = 7, calls: int = 5) -> float:
    """fp32 time / Bf16Linear time of `linear` over x [PROBE_ROWS, in] on its device: the median of `rounds`
    paired rounds, interleaved, after a warm-up."""
    x = torch.randn(PROBE_ROWS, linear.in_features, device=linear.weight.device, dtype=torch.float32)
    bf16 = Bf16Linear(linear)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def timed(layer: torch.nn.Module) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            layer(x)
        sync()
        return time.perf_counter() - t0

    timed(linear), timed(bf16)
    return statistics.median(timed(linear) / timed(bf16) for _ in range(rounds))


def apply_linear_dtype(model: torch.nn.Module, linear_dtype: str | None,
                       decode_linear_dtype: str | None = None) -> tuple[LinearPrecision, torch.nn.ModuleList]:
    """Swap the decoder's linear layers for Bf16Linear when linear_dtype is "bfloat16", the model is fp32 and a
    bf16 GEMM measures MIN_SPEEDUP faster here; otherwise leave the model as it is. Returns the precision and the
    layers the prefill runs: the model's own (swapped in place), or, with decode_linear_dtype "float32", a copy
    whose linears are swapped while the model keeps its fp32 layers for decoding. A swap in place changes the
    model fingerprint (ModelRunner takes it before and after)."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    layers = model.model.layers
    if decode_linear_dtype not in (None, linear_dtype, dtype) or (decode_linear_dtype == "bfloat16"
                                                                 and linear_dtype != "bfloat16"):
        raise ValueError(f"decode_linear_dtype: {decode_linear_dtype!r} with linear_dtype {linear_dtype!r}; the one "
                         f"split supported is 'bfloat16' linear layers for the prefill and 'float32' for decoding")
    if linear_dtype in (None, dtype):
        return LinearPrecision(dtype, linear_dtype), layers
    if linear_dtype != "bfloat16" or dtype != "float32":
        raise ValueError(f"linear_dtype: {linear_dtype!r} on a {dtype} model; the one mix supported is 'bfloat16' "
                         f"linear layers in a float32 model")
    linears = decoder_linears(model)
    speedup = bf16_speedup(probe_layer(linears))
    taken = speedup >= MIN_SPEEDUP
    split = taken and decode_linear_dtype == "float32"
    if split:  # deepcopy finds each Linear in the memo: the copy holds its Bf16Linear, never a copy of the fp32 one
        layers = copy.deepcopy(layers, memo={id(m): Bf16Linear(m) for _, _, m in linears})
    elif taken:
        for parent, name, module in linears:
            setattr(parent, name, Bf16Linear(module))
    out = LinearPrecision("bfloat16" if taken else "float32", linear_dtype, speedup, split)
    (log.info if out.dtype == "bfloat16" else log.warning)("%s", out.describe())
    return out, layers
