"""Requests of the HTTP layer as scheduler sequences (`SequenceRequest`), and waiting for them from asyncio.

`rag_sequence(svc, prepared)`: a /generate_with_chunks or /rag/answer generation; its prefill is the engine's
(`ChunkCacheEngine.prefill_steps`, full/prefix sliced), and the store's tier hits during that prefill are
reported in its stats (`tiers_hit`). `next_event(request, handle)`: the next event of a sequence, cancelling
it when the HTTP client disconnects (plain JSON requests included).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from fastapi import Request

from chunkcache.api.service import ChunkCacheService, Prepared
from chunkcache.blend.blender import PrefillSteps
from chunkcache.serving import Handle, SequenceRequest

DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The HTTP client disconnected; its sequence was cancelled."""


def tier_hits(svc: ChunkCacheService) -> Counter[str]:
    """The store's hits per tier so far."""
    stats = getattr(svc.store, "stats", None)
    return Counter({t: v["hits"] for t, v in stats()["tiers"].items()}) if stats is not None else Counter()


def rag_sequence(svc: ChunkCacheService, p: Prepared) -> SequenceRequest:
    info: dict = {"tiers_hit": {}}

    def prefill(reserve: int, slice_tokens: int) -> PrefillSteps:
        steps, hits = p.engine.prefill_steps(p.request, p.blend, reserve, slice_tokens), Counter()
        while True:
            before = tier_hits(svc)
            try:
                n = next(steps)
            except StopIteration as done:
                return done.value
            finally:
                hits += tier_hits(svc) - before
                info["tiers_hit"] = dict(hits)
            yield n

    return SequenceRequest(prefill, p.sampling, p.engine.eos_ids, p.request.num_tokens + p.sampling.max_new_tokens,
                           tokenizer=p.engine.tokenizer, info=info)


async def next_event(request: Request, handle: Handle) -> dict:
    """The sequence's next event; raises ClientGone (after cancelling it) when the client has disconnected."""
    while True:
        try:
            return await asyncio.wait_for(handle.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                handle.cancel()
                raise ClientGone() from None
