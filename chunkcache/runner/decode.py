"""Decode loop over a KVCache: greedy or sampled, one token per step (`ModelRunner.decode_step`: no
per-token planning or validation; the one host sync per token is taking the token)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.runner import ModelRunner


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def pick_token(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> int:
    """logits [vocab] -> token id."""
    if cfg.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < cfg.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def decode(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, cfg: SamplingConfig,
           eos_ids: set[int]) -> Iterator[int]:
    """Yield token ids starting from the prompt's last logits [vocab]; stops at EOS or max_new_tokens."""
    for token, _ in decode_steps(runner, cache, first_logits, cfg, eos_ids):
        yield token


def decode_steps(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, cfg: SamplingConfig,
                 eos_ids: set[int]) -> Iterator[tuple[int, bool]]:
    """As `decode`, yielding (token, last): last is True on the final token (so text can be flushed)."""
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    logits = first_logits
    for step in range(cfg.max_new_tokens):
        token = pick_token(logits, cfg, gen)
        last = token in eos_ids or step == cfg.max_new_tokens - 1 or cache.length >= runner.max_positions
        yield token, last
        if last:
            return
        logits = runner.decode_step(torch.tensor([token], dtype=torch.int64, device=runner.device), cache)


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a turn: the tokenizer's EOS and the model's generation config's (one or a list)."""
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    gen = [gen] if isinstance(gen, int) else list(gen or [])
    return {int(t) for t in [tokenizer.eos_token_id, *gen] if t is not None}
