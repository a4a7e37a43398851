"""Decode loop over a KVCache: greedy or sampled, one token per step (`ModelRunner.decode_step`: no
per-token planning or validation; the one host sync per token is taking the token).

With a `DecodeCorrection` (after KVShare, arXiv 2503.16525, which also recomputes during decode) each step also
recomputes the next K prompt tokens after the exact prefix, in position order, in the same forward as the step's token
(`ModelRunner.forward_rows`); once the prompt is done, the tokens generated so far, in one batch. Each batch attends to
positions already recomputed, so from then on the cache is exactly full prefill's over the same tokens: the blend's
approximation is confined to the first steps. TTFT is unchanged; those steps cost more.

With a gate, a decode step whose next-token distribution is unsure (top probability below the gate) while prompt
tokens are still pending finishes the correction at once (`DecodeCorrection.finish`): that token is then chosen from
full prefill's logits. The first token, chosen from the prefill's logits, is not gated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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
    """Per-request schedule of the decode-time recompute. ids [n]: the prompt's token ids; start: the next prompt
    position to recompute (first: the end of the exact prefix); per_step: K prompt tokens per step. `generated` holds
    the tokens fed so far (positions n..), recomputed in one batch right after the prompt's last batch. gate: a step
    whose top next-token probability is below it, prompt tokens still pending, finishes the correction (0: never);
    finished_at: how many tokens had been fed when the gate finished it (None: it did not)."""

    ids: torch.Tensor
    start: int
    per_step: int
    generated: list[torch.Tensor] = field(default_factory=list)  # [1] each
    done: bool = False
    gate: float = 0.0
    finished_at: int | None = None

    def __post_init__(self) -> None:
        if self.per_step < 1:
            raise ValueError(f"decode_correction must be >= 1 tokens per step, got {self.per_step}")
        if not 0 <= self.start <= self.ids.numel():
            raise ValueError(f"start {self.start} must be a prompt position in [0, {self.ids.numel()}]")
        if not 0.0 <= self.gate <= 1.0:
            raise ValueError(f"correction_gate must be a probability in [0, 1], got {self.gate}")

    @property
    def pending(self) -> int:
        """Prompt tokens still to recompute (the generated ones come on top)."""
        return 0 if self.done else self.ids.numel() - self.start

    def fresh(self) -> "DecodeCorrection":
        """An independent copy of the schedule as it stands (to replay it, e.g. teacher forcing then free run)."""
        return DecodeCorrection(self.ids, self.start, self.per_step, list(self.generated), self.done, self.gate,
                                self.finished_at)

    def take(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(ids [b], positions [b], increasing) to recompute with this step's token [1] (then recorded as generated;
        no host sync); None once done."""
        if self.done:
            return None
        n, dev = self.ids.numel(), self.ids.device
        end = min(n, self.start + self.per_step)
        ids, positions = self.ids[self.start:end], torch.arange(self.start, end, device=dev)
        self.start = end
        if end == n:  # the prompt is done: the generated tokens follow, and the cache is full prefill's after them
            gen = torch.cat(self.generated) if self.generated else ids[:0]  # [g]
            ids, positions = torch.cat((ids, gen)), torch.cat((positions, torch.arange(n, n + gen.numel(), device=dev)))
            self.done = True
        self.generated.append(token)
        return (ids, positions) if positions.numel() else None

    def unsure(self, logits: torch.Tensor) -> bool:
        """Whether the gate finishes the correction before a token is chosen from logits [vocab] (one host sync,
        only while prompt tokens are pending)."""
        return self.gate > 0 and not self.done and float(logits.float().softmax(-1).max()) < self.gate

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [b], positions [b], contiguous) of every prompt token still pending, then every token fed so far
        (the last one fed is the last row, so its logits are full prefill's): the rest of the correction."""
        gen = torch.cat(self.generated)  # [g]: positions n..n+g-1
        ids = torch.cat((self.ids[self.start:], gen))
        positions = torch.arange(self.start, self.ids.numel() + gen.numel(), device=self.ids.device)
        self.start, self.done, self.finished_at = self.ids.numel(), True, gen.numel()
        return ids, positions


def next_logits(runner: ModelRunner, token: torch.Tensor, cache: KVCache,
                correction: DecodeCorrection | None = None) -> torch.Tensor:
    """token [1] at position cache.length -> next-token logits [vocab]; with a correction, its next batch is
    recomputed in the same forward (their K/V overwrite the cached ones), and the rest of it too when its gate finds
    the logits unsure (then they are full prefill's)."""
    batch = correction.take(token) if correction is not None else None
    if batch is None:
        return runner.decode_step(token, cache)
    ids, positions = batch
    pos = torch.full((1,), cache.length, dtype=torch.int64, device=positions.device)
    hidden = runner.forward_rows(torch.cat((ids, token)), torch.cat((positions, pos)), cache, decode=True)  # [b+1, H]
    logits = runner.logits(hidden[-1:])[0]
    if correction.unsure(logits):
        ids, positions = correction.finish()
        logits = runner.logits(runner.forward_rows(ids, positions, cache, decode=True)[-1:])[0]
    return logits


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
    the prefill's schedule of prompt tokens to recompute during the steps (consumed)."""
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
