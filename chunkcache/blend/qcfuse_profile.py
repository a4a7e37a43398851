"""QCFuse's critical-layer profiling for one model, stored per model fingerprint (blend/model_profile.py).

The release ships a hand-made top-10 list per model (blend/qcfuse_config.py, MODEL_TOP10_CRITICAL_LAYERS) and
uses its first 3. How those lists were measured is not in the code; the procedure here (a guess, stated):
for each sample request, the oracle is the suffix's attention over the context in the model's own full
prefill (summed over layers and heads); each layer's candidate ranking is qcfuse's compressed-view
importance at that layer alone; a layer's score is the recall of the oracle's top `ratio` tokens by its own
top `ratio`, averaged over the sample. The TOP_CRITICAL best layers are critical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chunkcache.blend.anchor_memo import AnchorMemo
from chunkcache.blend.blender import Blender
from chunkcache.blend.chunk_source import ChunkSource, DictStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.model_profile import update_profile
from chunkcache.blend.probe import suffix_attention_by_layer
from chunkcache.blend.qcfuse import TOP_CRITICAL, view_importance
from chunkcache.blend.request import BlendRequest
from chunkcache.blend.selection import top_tokens
from chunkcache.runner.runner import ModelRunner


@dataclass(frozen=True)
class LayerProfile:
    """critical: the chosen layers (increasing); recall [n_layers]: mean oracle recall per layer; ranked: layers
    by recall, best first; n: requests measured."""

    critical: tuple[int, ...]
    recall: tuple[float, ...]
    ranked: tuple[int, ...]
    n: int


def _recall(a: torch.Tensor, b: torch.Tensor) -> float:
    return len(set(a.tolist()) & set(b.tolist())) / max(1, b.numel())


@torch.inference_mode()
def profile_critical_layers(runner: ModelRunner, requests: list[BlendRequest], ratio: float = 0.15,
                            anchor_ratio: float = 0.15, anchor_sinks: int = 4, top: int = TOP_CRITICAL
                            ) -> LayerProfile:
    """Measure every layer on `requests` (chunks precomputed behind each request's prefix; a request with fused
    contexts places its fused entries, as fusionqc does) and pick the best `top`."""
    if not requests:
        raise ValueError("requests: the profiling sample is empty")
    layers = tuple(range(runner.n_layers))
    total = torch.zeros(runner.n_layers, dtype=torch.float64)
    memo = AnchorMemo()
    for req in requests:
        source = ChunkSource(runner, DictStore(), req.prefix_ids)
        placement = BlendConfig(mode="fusion", recompute_ratio=0.0) if req.fused else BlendConfig(mode="naive")
        naive = Blender(runner, source).prefill(req, placement).cache  # the entries placed, nothing recomputed
        placed, fresh = len(req.prefix_ids) + len(req.chunks[0]), req.suffix_start
        naive.truncate(fresh)
        ids = torch.tensor(req.token_ids(), dtype=torch.int64, device=runner.device)
        full = runner.new_cache(req.num_tokens)
        runner.extend(ids[:fresh], full)
        oracle = suffix_attention_by_layer(runner, full, ids[fresh:]).sum(0)[placed:]  # [n_cand]
        budget = max(1, round(ratio * (fresh - len(req.prefix_ids))))
        want = top_tokens(oracle, budget)
        spans = [(o, o + len(c)) for c, o in zip(req.chunks[1:], req.chunk_offsets[1:], strict=True)]
        sink_ids = req.token_ids()[:min(anchor_sinks, placed)]
        entries = req.fused[1:] if req.fused else [source.context_ids] * len(spans)
        anchors = [memo.get(runner, naive, tuple(sink_ids), e, c, o, layers[-1], anchor_ratio, anchor_sinks)
                   for c, (o, _), e in zip(req.chunks[1:], spans, entries, strict=True)]
        per_layer = view_importance(runner, naive, ids[fresh:], placed, fresh, spans, anchors, layers)
        for layer in layers:
            total[layer] += _recall(top_tokens(per_layer[layer], budget), want)
    recall = (total / len(requests)).tolist()
    ranked = tuple(sorted(layers, key=lambda i: (-recall[i], i)))
    return LayerProfile(tuple(sorted(ranked[:top])), tuple(recall), ranked, len(requests))


def store_profile(runner: ModelRunner, prof: LayerProfile, root=None) -> None:
    update_profile(runner.fingerprint, root, critical_layers=list(prof.critical), layer_recall=list(prof.recall),
                   critical_ranked=list(prof.ranked), critical_n=prof.n)
