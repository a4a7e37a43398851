"""Teacher forcing and greedy decoding over a prefilled cache: what every bench compares against full prefill."""

from __future__ import annotations

import torch

from chunkcache.runner.decode import SamplingConfig, decode
from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


def tf_logits(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, answer: list[int],
              keep: bool = False) -> torch.Tensor:
    """Next-token logits [len(answer), vocab]: row i predicts answer[i] with answer[:i] fed over `cache`.

    keep: leave the KV of the whole answer in the cache (a caller stores it); otherwise the cache is
    truncated back to its prompt."""
    n = cache.length
    rows = [first_logits[None]]  # [1, vocab]
    fed = answer if keep else answer[:-1]
    with torch.inference_mode():
        if fed:
            hidden = runner.extend(torch.tensor(fed, dtype=torch.int64, device=runner.device), cache)  # [m, H]
            rows.append(runner.logits(hidden[: len(answer) - 1]))  # [len(answer)-1, vocab]
    if not keep:
        cache.truncate(n)
    return torch.cat(rows)


def greedy(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, max_new: int,
           eos_ids: set[int]) -> list[int]:
    """Greedy continuation of the prompt in `cache` (EOS included when generated); the cache keeps its KV."""
    with torch.inference_mode():
        return list(decode(runner, cache, first_logits, SamplingConfig(max_new_tokens=max_new), eos_ids))
