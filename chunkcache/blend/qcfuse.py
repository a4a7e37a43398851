"""QCFuse (arXiv 2606.05875; code github.com/uYanJX/QCFuse on SGLang 0.5.4): query-aware selection through a
compressed view, at a few profiled critical layers.

Read from the released code (blend/qcfuse_config.py, srt/utils/indice_select.py; the UCM port's
sparse/qcfuse/digest_index.py), reproduced here without its code:
  1. Anchors ("digest"). Each chunk is followed by a reconstruction prompt, "Repeat the previous context
     exactly." (KVzip's). At every layer up to the last critical one, the prompt's queries attend over
     [the first `anchor_sinks` tokens of the system prefix | the chunk | the prompt, causal]; a chunk token's
     score is the largest softmax mass any head and prompt query puts on it. A chunk's anchors at that layer
     are its first `anchor_sinks` tokens, then its best-scored ones, `anchor_ratio` (0.15) of the chunk in
     all. Offline in the release; here computed from the chunk's placed KV (the same KV the store holds,
     only shifted) at ingestion for fused entries, else on first use, and remembered per engine and entry
     (blend/anchor_memo.py).
  2. Compressed view. The question (the request's suffix) is run through layers 0..max(critical) over
     [the exact prefix | every chunk's anchors of that layer], each key at its place in the prompt (relative
     RoPE distances kept), so only a few percent of the context is read and only those layers need loading.
  3. Critical layers. At each critical layer the question's queries from the view score every original
     context token: softmax over [the whole cached context | the question], mass summed over heads and
     queries (the release averages; the same ranking), then averaged over the critical layers. The top
     recompute_ratio of the context tokens is recomputed from layer 0 with the question (as every
     keep-before-layer-0 mode here). The critical layers are the model's profiled ones
     (blend/qcfuse_profile.py, stored per fingerprint), the request's `critical_layers`, or, for a model never
     profiled, the FALLBACK_SPAN middle layers.
Guessed (the paper's text was not available here): how the release profiles its per-model top-10 lists
(qcfuse_profile.py states the procedure used); the anchor count's rounding (round(ratio * L), at least the
sinks); the fallback layers; that the whole suffix (question and template tail) plays the question.
"""

from __future__ import annotations

from pathlib import Path

import torch

from chunkcache.blend.model_profile import read_profile, shipped_profile
from chunkcache.blend.probe import suffix_mass
from chunkcache.blend.segment import rotate
from chunkcache.kernels.sparse_attention import plan_sparse_attention
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner

ZIP_TEXT = "\n\nRepeat the previous context exactly."  # the release's reconstruction prompt
TEST_ZIP_IDS = (5, 6, 7, 8, 9, 10)  # stand-in for a runner without a tokenizer (the tiny test model)
TOP_CRITICAL = 3  # the release's DEFAULT_CRITICAL_LAYERS
FALLBACK_SPAN = 3  # unprofiled model: this many layers around the middle


def zip_ids(runner: ModelRunner) -> tuple[int, ...]:
    tok = runner.tokenizer
    return tuple(tok.encode(ZIP_TEXT, add_special_tokens=False)) if tok is not None else TEST_ZIP_IDS


def fallback_layers(n_layers: int) -> tuple[int, ...]:
    """FALLBACK_SPAN layers centred on the middle (QCFuse's profiled lists sit at 40-60% depth)."""
    lo = max(0, n_layers // 2 - FALLBACK_SPAN // 2)
    return tuple(range(lo, min(n_layers, lo + FALLBACK_SPAN)))


def critical_layers(runner: ModelRunner, given: tuple[int, ...] = (), root: Path | None = None) -> tuple[int, ...]:
    """The request's layers, else the model's profiled ones (blend/qcfuse_profile.py: the user's own under root,
    default the cache dir's `profiles`, else the package's for its default model; under the engine's fingerprint,
    then under the model's as loaded, so bf16 linear layers keep its layers), else the fallback; ValueError naming
    the field when a layer does not exist in this model."""
    layers = given
    for fp in dict.fromkeys((runner.fingerprint, runner.profile_fingerprint)):
        layers = layers or tuple(read_profile(fp, root).get("critical_layers", ())) \
            or tuple(shipped_profile(fp).get("critical_layers", ()))
    layers = layers or fallback_layers(runner.n_layers)
    if any(not 0 <= x < runner.n_layers for x in layers):
        raise ValueError(f"critical_layers {layers} out of range for a model of {runner.n_layers} layers")
    return tuple(sorted(layers))


def anchor_count(length: int, ratio: float, sinks: int) -> int:
    return min(length, max(min(sinks, length), round(ratio * length)))


def zip_mass(q: torch.Tensor, keys: torch.Tensor, lo: int, hi: int, scale: float) -> torch.Tensor:
    """Largest attention [hi - lo] any head and query of q [n_heads, z, d] (the last z positions of keys
    [n_kv, T, d], causal among themselves) puts on keys lo..hi-1."""
    n_heads, z, d = q.shape
    n_kv, t = keys.shape[0], keys.shape[1]
    g = n_heads // n_kv
    scores = (q.reshape(n_kv, g * z, d) @ keys.transpose(1, 2)).float() * scale  # [n_kv, g*z, T]
    causal = torch.ones(z, z, dtype=torch.bool, device=q.device).tril().repeat(g, 1)  # [g*z, z]
    scores[..., t - z:].masked_fill_(~causal, float("-inf"))
    return scores.softmax(-1)[..., lo:hi].amax(dim=(0, 1))


@torch.inference_mode()
def chunk_anchors(runner: ModelRunner, cache: KVCache, offset: int, length: int, sink_end: int, last: int,
                  ratio: float, sinks: int) -> torch.Tensor:
    """Anchor indices [last + 1, a] (chunk-relative, increasing) of the chunk at cache positions
    offset..offset+length, for layers 0..last; cache layers 0..last must hold it (and the prefix)."""
    zids = zip_ids(runner)
    s, z, dev = sink_end, len(zids), runner.device
    work = runner.new_cache(s + length + z)
    layers = slice(0, last + 1)
    work.write(layers, slice(0, s), cache.keys[layers, :, :s], cache.values[layers, :, :s])
    work.write(layers, slice(s, s + length), cache.keys[layers, :, offset:offset + length],
               cache.values[layers, :, offset:offset + length], rope_delta=s - offset)
    positions = torch.arange(s + length, s + length + z, device=dev)
    plan = plan_sparse_attention(positions, s + length + z, dtype=runner.dtype)
    hidden = runner.embed(torch.tensor(zids, dtype=torch.int64, device=dev))
    count = anchor_count(length, ratio, sinks)
    head = min(sinks, length)
    out = torch.empty(last + 1, count, dtype=torch.int64, device=dev)
    for layer in range(last + 1):
        q, k, v = runner.qkv(layer, hidden, positions)
        work.write(layer, positions, k, v, end=plan.q_end)
        score = zip_mass(q, work.layer(layer)[0], s, s + length, runner.scale)  # [length]
        score[:head] = float("inf")
        out[layer] = score.topk(count).indices.sort().values
        hidden = runner.attend_mlp(layer, hidden, q, work, plan)
    return out


@torch.inference_mode()
def view_importance(runner: ModelRunner, cache: KVCache, suffix_ids: torch.Tensor, placed: int, fresh: int,
                    spans: list[tuple[int, int]], anchors: list[torch.Tensor], layers: tuple[int, ...]
                    ) -> torch.Tensor:
    """Importance [len(layers), fresh - placed] of candidates placed..fresh-1 at each of `layers`, from the
    suffix run through the compressed view. spans: (start, end) prompt positions of each candidate chunk;
    anchors[i] [max(layers) + 1, a_i]: its anchors per layer. Cache layers 0..max(layers) must be placed."""
    last, dev, ns = max(layers), runner.device, suffix_ids.numel()
    base = torch.arange(placed, device=dev)
    views = [torch.cat([base] + [s + a[layer] for (s, _), a in zip(spans, anchors, strict=True)])
             for layer in range(last + 1)]
    m = views[0].numel()
    work = runner.new_cache(m + ns)
    for layer, idx in enumerate(views):  # view keys kept at their prompt distance from the suffix
        work.write(layer, slice(0, m), cache.keys[layer][:, idx], cache.values[layer][:, idx], rope_delta=m - fresh)
    positions = torch.arange(m, m + ns, device=dev)
    plan = plan_sparse_attention(positions, m + ns, dtype=runner.dtype)
    hidden = runner.embed(suffix_ids)
    out = torch.zeros(len(layers), fresh - placed, dtype=torch.float32, device=dev)
    for layer in range(last + 1):
        q, k, v = runner.qkv(layer, hidden, positions)
        work.write(layer, positions, k, v, end=plan.q_end)
        if layer in layers:
            shift = fresh - m
            keys = torch.cat((cache.keys[layer][:, :fresh], rotate(k, shift, runner.inv_freq, runner.use_triton)), 1)
            q_true = rotate(q, shift, runner.inv_freq, runner.use_triton)  # [n_heads, ns, d] at prompt positions
            out[layers.index(layer)] = suffix_mass(q_true, keys, fresh, runner.scale)[placed:]
        hidden = runner.attend_mlp(layer, hidden, q, work, plan)
    return out
