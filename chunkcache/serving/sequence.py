"""One request as the scheduler sees it: what to prefill, how to sample, and where its events go.

`SequenceRequest` is the generic unit of work: a RAG answer, an OpenAI completion and an agent's chat turn
all become one (a prefill function, sampling settings, stop strings, an optional `on_finish`).
`Sequence` is its running state on the scheduler thread: the prefill generator, then the merged cache, the
pending token, its own torch.Generator (a seeded request samples the same tokens whatever it is batched
with), the incremental detokenizer and the stop-string hold-back.
`Handle` is what the submitter holds: iterate it (from a thread, or `async for` when submitted with an
event loop) for the events, `cancel()` it to make the sequence leave at the next step.

Events (dicts): {"token": id, "text": piece} per generated token ("token": None for text flushed at EOS;
pieces concatenate to the final text; a piece is "" while text is held back: an incomplete UTF-8
character, or the start of a stop string); then {"done": stats, "token_ids", "text", "finish_reason",
"usage"} (finish_reason: stop | length | cancelled), or {"error": exception}.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import torch

from chunkcache.blend.blender import BlendResult, PrefillSteps
from chunkcache.runner.decode import SamplingConfig, pick_token
from chunkcache.runner.detokenize import Detokenizer, held_back

PrefillFn = Callable[[int, int], PrefillSteps]  # (reserve for decode, slice tokens) -> prefill generator


def one_shot(prefill: Callable[[int], BlendResult]) -> PrefillFn:
    """A prefill that runs in one piece (reserve -> BlendResult) as a PrefillFn."""

    def steps(reserve: int, slice_tokens: int) -> PrefillSteps:
        res = prefill(reserve)
        yield res.stats.prompt_tokens - res.stats.reused_tokens
        return res

    return steps


@dataclass
class SequenceRequest:
    """prefill(reserve, slice_tokens): the request's prefill generator (`ChunkCacheEngine.prefill_steps`, or
        `one_shot(fn)`); reserve is the decode room it must leave in the cache.
    kv_tokens: prompt + max new tokens, what admission charges against the KV budget.
    tokenizer: for text (None: token ids only, no stop strings). info: merged into the done event's stats.
    on_finish(sequence): runs on the scheduler thread when the sequence ends by EOS, a stop string or max
        tokens (not when cancelled), while its BlendResult is still held (an agent turn stores its response KV).
    """

    prefill: PrefillFn
    sampling: SamplingConfig
    eos_ids: set[int]
    kv_tokens: int
    tokenizer: object | None = None
    stop: list[str] = field(default_factory=list)
    reserve: int | None = None  # decode room in the cache; default sampling.max_new_tokens
    info: dict = field(default_factory=dict)
    on_finish: Callable[["Sequence"], None] | None = None

    def __post_init__(self) -> None:
        if self.kv_tokens < 1:
            raise ValueError(f"kv_tokens must be >= 1, got {self.kv_tokens}")
        self.stop = [s for s in self.stop if s]
        if self.stop and self.tokenizer is None:
            raise ValueError("stop: stop strings need a tokenizer")


class Handle:
    """The submitter's side of one sequence: its events, and `cancel()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._events: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self.cancelled = False
        self.checked_at = time.monotonic()  # when the consumer last checked that its client is still there

    def cancel(self) -> None:
        """The sequence leaves at the next step (a waiting one at once) and its KV is freed."""
        self.cancelled = True

    def put(self, event: dict) -> None:
        """Deliver an event (scheduler thread). A closed event loop (consumer gone) cancels the sequence."""
        if self._loop is None:
            self._events.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:
            self.cancelled = True

    def __iter__(self) -> Iterator[dict]:
        if self._loop is not None:
            raise TypeError("this handle was submitted with an event loop: use `async for`")
        while True:
            event = self._events.get()
            yield event
            if "done" in event or "error" in event:
                return

    async def get(self) -> dict:
        """The next event (handles submitted with an event loop)."""
        if self._loop is None:
            raise TypeError("this handle was submitted without an event loop: iterate it from a thread")
        return await self._events.get()

    async def __aiter__(self) -> AsyncIterator[dict]:
        if self._loop is None:
            raise TypeError("this handle was submitted without an event loop: iterate it from a thread")
        while True:
            event = await self._events.get()
            yield event
            if "done" in event or "error" in event:
                return

    def result(self) -> dict:
        """Block until the end (thread handles): the done event; an error event raises its exception."""
        for event in self:
            if "error" in event:
                raise event["error"]
        return event


class Sequence:
    """A request's state on the scheduler thread (no locking: only that thread touches it)."""

    def __init__(self, req: SequenceRequest, handle: Handle, kv_bytes: int, device: torch.device) -> None:
        self.req, self.handle, self.kv_bytes = req, handle, kv_bytes
        s = req.sampling
        self.generator = torch.Generator(device=device).manual_seed(s.seed) if s.seed is not None else None
        self.detok = Detokenizer(req.tokenizer) if req.tokenizer is not None else None
        self.steps: PrefillSteps | None = None
        self.result: BlendResult | None = None
        self.next_token = 0  # the last picked token: the input of the next decode step
        self.token_ids: list[int] = []
        self.text, self._sent = "", 0
        self.finish_reason: str | None = None
        self.submitted = time.perf_counter()
        self.started = self.first = 0.0

    @property
    def reserve(self) -> int:
        return self.req.reserve if self.req.reserve is not None else self.req.sampling.max_new_tokens

    def start(self, slice_tokens: int) -> None:
        self.started = time.perf_counter()
        self.steps = self.req.prefill(self.reserve, slice_tokens)

    def pick(self, logits: torch.Tensor) -> int:
        """logits [vocab] -> the next token (greedy, or sampled with the sequence's own generator)."""
        return pick_token(logits, self.req.sampling, self.generator)

    def accept(self, token: int, max_positions: int) -> bool:
        """Take a picked token: emit its event; True when the sequence is finished."""
        if not self.first:
            self.first = time.perf_counter()
        cache = self.result.cache  # type: ignore[union-attr]
        step = len(self.token_ids)
        eos = token in self.req.eos_ids
        last = eos or step == self.req.sampling.max_new_tokens - 1 or cache.length >= max_positions
        piece = ""
        if not eos:
            self.token_ids.append(token)
            piece = self.detok.add(token) if self.detok is not None else ""
        if last and self.detok is not None:
            piece += self.detok.flush()
        self.text += piece
        cut = self._cut()
        if cut is not None:
            self.text, last = self.text[:cut], True
        if last:
            self.finish_reason = "stop" if eos or cut is not None else "length"
        end = len(self.text) if last else len(self.text) - held_back(self.text, self.req.stop)
        out, self._sent = self.text[self._sent:max(end, self._sent)], max(end, self._sent)
        if not eos:
            self.handle.put({"token": token, "text": out})
        elif out:
            self.handle.put({"token": None, "text": out})
        self.next_token = token
        return last

    def _cut(self) -> int | None:
        found = [self.text.find(s) for s in self.req.stop if s in self.text]
        return min(found) if found else None

    def done_event(self) -> dict:
        stats = self.result.stats.as_dict() if self.result is not None else {}
        now = time.perf_counter()
        started = self.started or now
        stats.update(self.req.info, generated_tokens=len(self.token_ids), queue_s=started - self.submitted,
                     ttft_s=(self.first or now) - started, engine_s=now - started)
        prompt = stats.get("prompt_tokens", 0)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(self.token_ids),
                 "total_tokens": prompt + len(self.token_ids), "cached_tokens": stats.get("reused_tokens", 0)}
        return {"done": stats, "token_ids": list(self.token_ids), "text": self.text,
                "finish_reason": self.finish_reason or "cancelled", "usage": usage}
