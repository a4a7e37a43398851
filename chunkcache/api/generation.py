"""Run one generation on the model worker: a JSON answer, or server-sent events while it decodes.

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
import threading
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from chunkcache.api.schemas import GenerationOptions
from chunkcache.api.service import ChunkCacheService
from chunkcache.api.worker import ModelWorker, Timed


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
    """texts() runs on the worker and returns (chunk texts, extra response fields)."""
    svc: ChunkCacheService = request.app.state.service
    metrics = request.app.state.metrics
    if not opts.stream:
        def job() -> tuple[str, dict, list[int], dict]:
            chunks, extra = texts()
            text, stats, ids = svc.generate(svc.prepare(chunks, query, opts))
            return text, stats, ids, extra

        timed = await submit(request, job)
        text, stats, ids, extra = timed.value
        stats.update(engine_s=timed.run_s, queue_s=timed.queue_s)
        metrics.observe_generation(stats)
        return {"text": text, "stats": stats, **_ids(opts, ids), **extra}

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def push(kind: str, value: object) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    def job() -> None:
        try:
            chunks, extra = texts()
            prepared = svc.prepare(chunks, query, opts)
            push("ready", extra)
            for item in svc.stream(prepared, cancel.is_set):
                push("item", item)
        except Exception as err:  # noqa: BLE001 - delivered to the request
            push("error", err)

    future = request.app.state.worker.submit(job)
    try:
        kind, extra = await events.get()
    except asyncio.CancelledError:  # client gone before the first token: skip or stop the work
        cancel.set()
        future.cancel()
        raise
    if kind == "error":
        raise extra  # type: ignore[misc]

    async def stream() -> AsyncIterator[bytes]:
        pieces: list[str] = []
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    yield _sse("error", {"detail": str(value)})
                    return
                if "done" in value:
                    timed: Timed = await asyncio.wrap_future(future)
                    stats = {**value["done"], "engine_s": timed.run_s, "queue_s": timed.queue_s}
                    metrics.observe_generation(stats)
                    yield _sse("done", {"text": "".join(pieces), "stats": stats, **_ids(opts, value["token_ids"]),
                                        **extra})
                    return
                pieces.append(value["text"])
                yield _sse("token", value)
        finally:
            cancel.set()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
