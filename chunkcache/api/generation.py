"""Run one generation through the scheduler (batched with the others): a JSON answer, or server-sent events
while it decodes.

SSE events: `token` ({"token", "text"}) per generated token, then `done` ({"text", "stats", ...}),
("token_ids" too with return_token_ids). The text is tokenizer.decode(generated ids,
skip_special_tokens=True), unstripped, less a last character cut by max_tokens (token_ids keep its
bytes); the token pieces concatenate to it (a piece is "" while a UTF-8 character is incomplete;
"token" is null on a piece flushed at EOS).
or `error` ({"detail"}) if the engine fails mid-stream. Errors found before the first token
(validation, unknown chunk ids, token limits, a full queue) are plain HTTP errors instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from chunkcache.api.schemas import GenerationOptions
from chunkcache.api.service import ChunkCacheService
from chunkcache.api.sequences import ClientGone, next_event, rag_sequence
from chunkcache.api.worker import ModelWorker, Timed
from chunkcache.serving import Handle


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _ids(opts: GenerationOptions, ids: list[int]) -> dict:
    return {"token_ids": ids} if opts.return_token_ids else {}


async def submit(request: Request, fn: Callable[[], object]) -> Timed:
    """Run fn on the model worker; QueueFull / WorkerClosed propagate to the app's handlers."""
    worker: ModelWorker = request.app.state.worker
    return await asyncio.wrap_future(worker.submit(fn))


async def generate(request: Request, texts: Callable[[], tuple[list[str], dict]], query: str,
                   opts: GenerationOptions):  # type: ignore[no-untyped-def]
    """texts() runs on the scheduler thread (an exclusive call) and returns (chunk texts, extra response fields);
    the generation then runs as a sequence batched with the others. A client that disconnects (streaming or
    not) cancels its sequence."""
    svc: ChunkCacheService = request.app.state.service
    metrics = request.app.state.metrics
    loop = asyncio.get_running_loop()

    def admit() -> tuple[Handle, dict]:
        chunks, extra = texts()
        return request.app.state.scheduler.submit(rag_sequence(svc, svc.prepare(chunks, query, opts)), loop), extra

    handle, extra = (await submit(request, admit)).value
    try:
        first = await next_event(request, handle)
    except ClientGone:
        return Response(status_code=499)
    except BaseException:
        handle.cancel()
        raise
    if "error" in first:
        raise first["error"]

    if not opts.stream:
        event = first
        try:
            while "done" not in event:
                if "error" in event:
                    raise event["error"]
                event = await next_event(request, handle)
        except ClientGone:
            return Response(status_code=499)
        finally:
            handle.cancel()  # a no-op once done
        metrics.observe_generation(event["done"])
        return {"text": event["text"], "stats": event["done"], **_ids(opts, event["token_ids"]), **extra}

    async def stream() -> AsyncIterator[bytes]:
        pieces: list[str] = []
        event = first
        try:
            while True:
                if "error" in event:
                    yield _sse("error", {"detail": str(event["error"])})
                    return
                if "done" in event:
                    metrics.observe_generation(event["done"])
                    yield _sse("done", {"text": "".join(pieces), "stats": event["done"],
                                        **_ids(opts, event["token_ids"]), **extra})
                    return
                pieces.append(event["text"])
                yield _sse("token", {"token": event["token"], "text": event["text"]})
                event = await handle.get()
        finally:
            handle.cancel()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
