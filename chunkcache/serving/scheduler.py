"""Continuous batching: one thread owns the runner and every running request, and advances them step by step.

Each step, on the scheduler thread:
1. exclusive calls (`call` / `submit_call`: chunk precompute, ingestion) run, so nothing else uses the runner
   while they do; then cancelled sequences leave and waiting requests are admitted (FIFO) while fewer than
   max_batch are in flight and their KV (prompt + max new tokens) fits kv_budget_bytes;
2. one batched decode forward (`runner/batch.py decode_batch`) advances every running sequence by a token;
   finished ones leave at once, freeing their KV and their slot;
3. prefill work of admitted sequences runs, oldest first, until max_batch_tokens tokens were computed in this
   step (at least one piece runs per step). A sequence whose prefill completes picks its first token at once
   (that is its TTFT) and decodes from the next step on.

Chunked prefill. `full` and `prefix` prefills are sliced into pieces of at most max_batch_tokens tokens
(`runner.extend` appends at cache.length, so slices compose exactly), so a long computed prompt costs the
running sequences one slice of latency per step, not the whole prompt. The selective modes (cacheblend,
blend, epic...) choose their tokens at check layers that need the whole request, so a blended prefill is one
piece; it computes about 15% of the prompt, and its placed KV costs no compute.

Decode rows and prefill rows alternate within a step instead of sharing one forward: the prefill belongs to
the blender (KV placement, layer-pipelined loads, selective recompute with its sparse attention plan), which
a shared forward would have to fold into the decode loop layer by layer. On the CPU the two costs add up
either way (both are compute bound); on a GPU a shared forward would save one read of the weights per step,
which matters little next to a prefill slice. Blending stays per request and unchanged.

KV. Every sequence keeps its own contiguous `KVCache` (the prefill's, with the decode room reserved), and the
batched step attends per sequence over it. A paged pool would save the reserved-but-unused tail of each
cache, but blending writes placed chunk KV, rotated, at arbitrary positions of a request's cache: contiguous
caches keep that one code path (`KVCache.write`) and the admission budget charges the reserved size.

Exactness: a sequence's tokens do not depend on what it is batched with (the batched step equals the
single-sequence step per row; sampling uses the sequence's own generator).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import torch

from chunkcache.runner.batch import decode_batch
from chunkcache.runner.decode import next_logits
from chunkcache.runner.heap import heap_trimmer
from chunkcache.runner.runner import ModelRunner
from chunkcache.serving.config import SchedulerConfig
from chunkcache.serving.sequence import Handle, Sequence, SequenceRequest


class QueueFull(RuntimeError):
    """More requests are waiting than the scheduler takes (HTTP 429)."""


class WorkerClosed(RuntimeError):
    """The scheduler is shutting down (HTTP 503)."""


@dataclass
class Timed:
    """An exclusive call's value, with how long it waited and how long it ran."""

    value: Any
    queue_s: float
    run_s: float


class Scheduler:
    def __init__(self, runner: ModelRunner, cfg: SchedulerConfig = SchedulerConfig(),
                 name: str = "chunkcache-scheduler") -> None:
        self.runner, self.cfg = runner, cfg
        self.kv_bytes_per_token = 2 * runner.n_layers * runner.n_kv_heads * runner.head_dim * runner.dtype.itemsize
        self._cond = threading.Condition()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._calls: collections.deque = collections.deque()
        self._prefilling: list[Sequence] = []
        self._running: list[Sequence] = []
        self.kv_in_flight = 0  # bytes charged by admitted sequences
        self._closed = False
        self._trim = heap_trimmer()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- submitters' side (any thread) -------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests and calls waiting to be admitted."""
        return len(self._waiting) + len(self._calls)

    @property
    def active(self) -> int:
        """Sequences admitted (prefilling or decoding)."""
        return len(self._prefilling) + len(self._running)

    def submit(self, req: SequenceRequest, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        """Queue a sequence; its events arrive on the returned handle (async iteration when loop is given).
        Raises QueueFull beyond max_waiting, WorkerClosed when shutting down, ValueError when its KV alone
        exceeds the budget."""
        need = req.kv_tokens * self.kv_bytes_per_token
        if need > self.cfg.kv_budget_bytes:
            raise ValueError(f"kv_tokens: {req.kv_tokens} tokens (prompt + max new tokens) need {need} bytes of KV, "
                             f"more than the server's kv_budget_bytes of {self.cfg.kv_budget_bytes}")
        handle = Handle(loop)
        with self._cond:
            self._admit_check()
            self._waiting.append(Sequence(req, handle, need, self.runner.device))
            self._cond.notify()
        return handle

    def submit_call(self, fn: Callable[[], Any], block: bool = False, timeout: float | None = None) -> "Future[Timed]":
        """Run fn on the scheduler thread between steps (nothing else uses the runner meanwhile).
        block=False: QueueFull at once when max_waiting are waiting; True: wait up to timeout for room."""
        fut: Future[Timed] = Future()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                try:
                    self._admit_check()
                    break
                except QueueFull:
                    left = None if deadline is None else deadline - time.monotonic()
                    if not block or (left is not None and left <= 0):
                        raise
                    self._cond.wait(left)
            self._calls.append((fn, fut, time.perf_counter()))
            self._cond.notify_all()
        return fut

    def call(self, fn: Callable[[], Any], poll_s: float = 0.5) -> Any:
        """Run fn on the scheduler thread and return its value, waiting for room and for the result."""
        fut = self.submit_call(fn, block=True)
        while True:
            try:
                return fut.result(timeout=poll_s).value
            except FutureTimeout:
                if not self._thread.is_alive():
                    raise WorkerClosed("the scheduler shut down before running the call") from None

    def _admit_check(self) -> None:
        if self._closed:
            raise WorkerClosed("the scheduler is shutting down")
        if self.depth >= self.cfg.max_waiting:
            raise QueueFull(f"model queue full ({self.cfg.max_waiting} waiting)")

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what was submitted, stop the thread; what is left then gets WorkerClosed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            err = WorkerClosed("the scheduler shut down before finishing the request")
            for seq in [*self._waiting, *self._prefilling, *self._running]:
                seq.handle.put({"error": err})
            for _, fut, _ in self._calls:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(WorkerClosed("the scheduler shut down before running the call"))
            for group in (self._waiting, self._calls, self._prefilling, self._running):
                group.clear()

    # ---- the scheduler thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._calls or self._prefilling or self._running or self._closed):
                    self._cond.wait()
                if self._closed and not (self._waiting or self._calls or self._prefilling or self._running):
                    return
                calls = list(self._calls)
                self._calls.clear()
                self._cond.notify_all()  # room for blocked submit_call
            for fn, fut, queued in calls:
                self._run_call(fn, fut, queued)
            try:
                self._step()
            except Exception as err:  # noqa: BLE001 - a bug in a step must not leave requests waiting forever
                for seq in self._prefilling + self._running:
                    self._leave(seq, err)
            if not (self._running or self._prefilling or self._waiting or self._calls):
                self._trim()  # idle: hand freed KV back to the OS, off every request's critical path

    def _step(self) -> None:
        self._admit()
        if self._running:
            self._decode()
        if self._prefilling:
            self._prefill()

    @staticmethod
    def _run_call(fn: Callable[[], Any], fut: Future, queued: float) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        start = time.perf_counter()
        try:
            value = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            fut.set_exception(err)
        else:
            fut.set_result(Timed(value, start - queued, time.perf_counter() - start))

    def _admit(self) -> None:
        for seq in [s for s in self._prefilling + self._running if s.handle.cancelled]:
            self._leave(seq)
        with self._cond:
            for seq in [s for s in self._waiting if s.handle.cancelled]:
                self._waiting.remove(seq)
                seq.handle.put(seq.done_event())
            while self._waiting and self.active < self.cfg.max_batch \
                    and self.kv_in_flight + self._waiting[0].kv_bytes <= self.cfg.kv_budget_bytes:
                seq = self._waiting.popleft()
                self.kv_in_flight += seq.kv_bytes
                self._prefilling.append(seq)
            self._cond.notify_all()
        for seq in list(self._prefilling):
            if seq.steps is None:
                try:
                    seq.start(self.cfg.max_batch_tokens)
                except Exception as err:  # noqa: BLE001 - delivered to the request
                    self._leave(seq, err)

    def _leave(self, seq: Sequence, error: BaseException | None = None) -> None:
        """seq leaves the batch: its event goes out, its KV is dropped and its budget freed."""
        for group in (self._prefilling, self._running):
            if seq in group:
                group.remove(seq)
        if error is None and seq.finish_reason is not None and seq.req.on_finish is not None:
            try:
                seq.req.on_finish(seq)
            except Exception as err:  # noqa: BLE001 - delivered to the request
                error = err
        if seq.steps is not None:
            seq.steps.close()
        seq.handle.put({"error": error} if error is not None else seq.done_event())
        seq.result = seq.steps = None
        with self._cond:
            self.kv_in_flight -= seq.kv_bytes
            self._cond.notify_all()

    def _decode(self) -> None:
        seqs = list(self._running)
        tokens = torch.tensor([s.next_token for s in seqs], dtype=torch.int64, device=self.runner.device)  # [B]
        try:
            logits = self._decode_rows(seqs, tokens)  # [B, vocab]
        except Exception as err:  # noqa: BLE001 - every sequence of the failed step gets it
            for seq in seqs:
                self._leave(seq, err)
            return
        greedy = logits.argmax(-1).tolist()  # one host sync for the greedy rows
        for b, seq in enumerate(seqs):
            token = greedy[b] if seq.req.sampling.temperature == 0 else seq.pick(logits[b])
            if seq.accept(token, self.runner.max_positions):
                self._leave(seq)

    def _decode_rows(self, seqs: list[Sequence], tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, vocab]: one batched forward for the plain rows; a sequence still correcting its
        context during decode (BlendResult.correction) runs alone, its token with its next context batch."""
        fixing = [b for b, s in enumerate(seqs) if s.result.correction is not None and not s.result.correction.done]
        if not fixing:
            return decode_batch(self.runner, tokens, [s.result.cache for s in seqs])
        rows: list[torch.Tensor | None] = [None] * len(seqs)
        plain = [b for b in range(len(seqs)) if b not in fixing]
        if plain:
            out = decode_batch(self.runner, tokens[plain], [seqs[b].result.cache for b in plain])  # [len(plain), vocab]
            for i, b in enumerate(plain):
                rows[b] = out[i]
        for b in fixing:
            rows[b] = next_logits(self.runner, tokens[b:b + 1], seqs[b].result.cache, seqs[b].result.correction)
        return torch.stack(rows)  # type: ignore[arg-type]

    def _prefill(self) -> None:
        used = 0
        for seq in list(self._prefilling):
            while used < self.cfg.max_batch_tokens:
                try:
                    used += max(1, next(seq.steps))  # type: ignore[arg-type]
                except StopIteration as done:
                    self._prefilled(seq, done.value)
                    break
                except Exception as err:  # noqa: BLE001 - delivered to the request
                    self._leave(seq, err)
                    break
            if used >= self.cfg.max_batch_tokens:
                return

    def _prefilled(self, seq: Sequence, result: Any) -> None:
        seq.result = result
        self._prefilling.remove(seq)
        self._running.append(seq)
        if seq.accept(seq.pick(result.logits), self.runner.max_positions):
            self._leave(seq)
