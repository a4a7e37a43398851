"""Requests of the HTTP layer as scheduler sequences (`SequenceRequest`), and waiting for them from asyncio.

`rag_sequence(svc, prepared)`: a /generate_with_chunks or /rag/answer generation; its prefill is the engine's
(`ChunkCacheEngine.prefill_steps`, full/prefix sliced), and the store's tier hits during that prefill are
reported in its stats (`tiers_hit`). `turn_sequence(svc, req, cfg, sampling, stop)`: a chat turn of the
OpenAI routes on the service's AgentRuntime (its prefill path: anchors, prefix cache), whose reply is kept as a
chunk when it finishes (agents/chat_turn.py keep_reply). `next_event(request, handle)`: the next event of a
sequence, cancelling it when the HTTP client disconnects (plain JSON requests included).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from fastapi import Request

from chunkcache.agents.chat_turn import keep_reply
from chunkcache.api.service import ChunkCacheService, Prepared
from chunkcache.blend.blender import PrefillSteps
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.decode import SamplingConfig
from chunkcache.serving import Handle, Sequence, SequenceRequest

DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The HTTP client disconnected; its sequence was cancelled."""


def _counted(steps: PrefillSteps, svc: ChunkCacheService, info: dict) -> PrefillSteps:
    """steps, recording the store's tier hits during them in info["tiers_hit"]."""
    hits: Counter[str] = Counter()
    while True:
        before = svc.tier_hits()
        try:
            n = next(steps)
        except StopIteration as done:
            return done.value
        finally:
            hits += svc.tier_hits() - before
            info["tiers_hit"] = dict(hits)
        yield n


def turn_sequence(svc: ChunkCacheService, req: BlendRequest, cfg: BlendConfig, sampling: SamplingConfig,
                  stop: list[str]) -> SequenceRequest:
    """A chat turn (a bound agent template) as a sequence; its finished reply is stored as a chunk."""
    rt, info = svc.runtime, {"tiers_hit": {}}

    def prefill(reserve: int, slice_tokens: int) -> PrefillSteps:
        return _counted(rt.blender.prefill_steps(req, cfg, reserve, slice_tokens), svc, info)

    def keep(seq: Sequence) -> None:
        keep_reply(rt, seq.result, req.num_tokens, seq.token_ids, seq.text, cfg)  # type: ignore[arg-type]

    return SequenceRequest(prefill, sampling, rt.eos_ids, req.num_tokens + sampling.max_new_tokens,
                           tokenizer=rt.tokenizer, stop=stop, info=info, on_finish=keep)


def rag_sequence(svc: ChunkCacheService, p: Prepared) -> SequenceRequest:
    info: dict = {"tiers_hit": {}}

    def prefill(reserve: int, slice_tokens: int) -> PrefillSteps:
        return _counted(p.engine.prefill_steps(p.request, p.blend, reserve, slice_tokens), svc, info)

    return SequenceRequest(prefill, p.sampling, p.engine.eos_ids, p.request.num_tokens + p.sampling.max_new_tokens,
                           tokenizer=p.engine.tokenizer, info=info)


async def next_event(request: Request, handle: Handle) -> dict:
    """The sequence's next event; raises ClientGone (after cancelling it) when the client has disconnected. The
    connection is checked at least every DISCONNECT_POLL_S, also while events keep coming (a decoding sequence
    yields one per step, faster than the poll)."""
    now = time.monotonic()
    if now - handle.checked_at >= DISCONNECT_POLL_S:
        handle.checked_at = now
        if await request.is_disconnected():
            handle.cancel()
            raise ClientGone()
    while True:
        try:
            return await asyncio.wait_for(handle.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            handle.checked_at = time.monotonic()
            if await request.is_disconnected():
                handle.cancel()
                raise ClientGone() from None
