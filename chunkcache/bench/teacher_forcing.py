"""Teacher forcing and greedy decoding over a prefilled cache: what every bench compares against full prefill."""

from __future__ import annotations

import torch

from chunkcache.runner.decode import DecodeCorrection, SamplingConfig, decode, next_logits
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


def tf_logits(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, answer: list[int],
              keep: bool = False, correction: DecodeCorrection | None = None) -> torch.Tensor:
    """Next-token logits [len(answer), vocab]: row i predicts answer[i] with answer[:i] fed over `cache`.

    keep: leave the KV of the whole answer in the cache (a caller stores it); otherwise the cache is
    truncated back to its prompt. correction: the prefill's decode-time correction, replayed on a fresh copy of
    its schedule as decoding would (one token per step, each with its batch of prompt tokens); without keep it runs
    on a copy of the cache, so the cache keeps the prefill's KV."""
    if correction is not None:
        return _tf_corrected(runner, cache if keep else copy_cache(runner, cache), first_logits, answer, keep,
                             correction.fresh())
    n = cache.length
    rows = [first_logits[None]]  # [1, vocab]
    fed = answer if keep else answer[:-1]
    with torch.inference_mode():
        if fed:
            hidden = runner.extend(torch.tensor(fed, dtype=torch.int64, device=runner.device), cache,
                                   decode=True)  # [m, H]
            rows.append(runner.logits(hidden[: len(answer) - 1]))  # [len(answer)-1, vocab]
    if not keep:
        cache.truncate(n)
    return torch.cat(rows)


def _tf_corrected(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, answer: list[int], keep: bool,
                  correction: DecodeCorrection) -> torch.Tensor:
    cache.reserve(cache.length + len(answer))
    rows = [first_logits]
    for i, tok in enumerate(answer if keep else answer[:-1]):
        logits = next_logits(runner, torch.tensor([tok], dtype=torch.int64, device=runner.device), cache, correction)
        if i < len(answer) - 1:
            rows.append(logits)
    return torch.stack(rows)  # [len(answer), vocab]


def copy_cache(runner: ModelRunner, cache: KVCache) -> KVCache:
    """A new cache holding cache's valid positions (with room for the same capacity)."""
    out, n = runner.new_cache(cache.capacity), cache.length
    out.write(slice(None), slice(0, n), cache.keys[:, :, :n], cache.values[:, :, :n])
    return out


def greedy(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, max_new: int,
           eos_ids: set[int], correction: DecodeCorrection | None = None, copy: bool = True) -> list[int]:
    """Greedy continuation of the prompt in `cache` (EOS included when generated); the cache keeps its KV (with a
    correction, a fresh copy of its schedule runs, so the cache's prompt KV becomes full prefill's too; copy=False:
    the schedule given runs, consumed, e.g. to read its finished_at)."""
    fresh = correction.fresh() if correction is not None and copy else correction
    with torch.inference_mode():
        return list(decode(runner, cache, first_logits, SamplingConfig(max_new_tokens=max_new), eos_ids, fresh))
