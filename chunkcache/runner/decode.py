"""Decode loop over a KVCache: greedy or sampled, one token per step (`ModelRunner.decode_step`: no
per-token planning or validation; the one host sync per token is taking the token).

With a `DecodeCorrection` (KVShare-style, arXiv 2503.16525) each step also recomputes the next few context tokens
the blended prefill left approximate, in the same forward as the step's token (`ModelRunner.forward_rows`), so the
cache converges towards full prefill's while the answer is generated: TTFT is unchanged, each step costs more."""

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


@dataclass
class DecodeCorrection:
    """Per-request queue of context tokens to recompute during decode. ids [n]: the prompt's token ids; pending [m]:
    positions (< n) whose KV came from cache, best first (the selector's ranking where it has one); per_step: how
    many each decode step recomputes. `take` pops the next batch; use `fresh()` for a second pass over a copy."""

    ids: torch.Tensor
    pending: torch.Tensor
    per_step: int

    def __post_init__(self) -> None:
        if self.per_step < 1:
            raise ValueError(f"decode_correction must be >= 1 tokens per step, got {self.per_step}")

    def take(self) -> torch.Tensor:
        """The next batch of positions [<= per_step], increasing; removed from the queue."""
        batch, self.pending = self.pending[: self.per_step], self.pending[self.per_step:]
        return batch.sort().values

    def fresh(self) -> "DecodeCorrection":
        return DecodeCorrection(self.ids, self.pending, self.per_step)


def next_logits(runner: ModelRunner, token: torch.Tensor, cache: KVCache,
                correction: DecodeCorrection | None = None) -> torch.Tensor:
    """token [1] at position cache.length -> next-token logits [vocab]; with a correction, its next batch of context
    tokens is recomputed in the same forward (their K/V overwrite the cached ones)."""
    batch = correction.take() if correction is not None else None
    if batch is None or batch.numel() == 0:
        return runner.decode_step(token, cache)
    positions = torch.cat((batch, torch.full((1,), cache.length, dtype=torch.int64, device=batch.device)))  # [b+1]
    hidden = runner.forward_rows(torch.cat((correction.ids[batch], token)), positions, cache)  # [b+1, H]
    return runner.logits(hidden[-1:])[0]


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
           eos_ids: set[int], correction: DecodeCorrection | None = None) -> Iterator[int]:
    """Yield token ids starting from the prompt's last logits [vocab]; stops at EOS or max_new_tokens."""
    for token, _ in decode_steps(runner, cache, first_logits, cfg, eos_ids, correction):
        yield token


def decode_steps(runner: ModelRunner, cache: KVCache, first_logits: torch.Tensor, cfg: SamplingConfig,
                 eos_ids: set[int], correction: DecodeCorrection | None = None) -> Iterator[tuple[int, bool]]:
    """As `decode`, yielding (token, last): last is True on the final token (so text can be flushed). correction:
    the prefill's queue of context tokens to recompute during the steps (consumed)."""
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    logits = first_logits
    for step in range(cfg.max_new_tokens):
        token = pick_token(logits, cfg, gen)
        last = token in eos_ids or step == cfg.max_new_tokens - 1 or cache.length >= runner.max_positions
        yield token, last
        if last:
            return
        logits = next_logits(runner, torch.tensor([token], dtype=torch.int64, device=runner.device), cache, correction)


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a turn: the tokenizer's EOS and the model's generation config's (one or a list)."""
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    gen = [gen] if isinstance(gen, int) else list(gen or [])
    return {int(t) for t in [tokenizer.eos_token_id, *gen] if t is not None}
