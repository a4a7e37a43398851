"""Run one generation through the scheduler (batched with the others): a JSON answer, or server-sent events
while it decodes.

SSE events: `token` ({"token", "text"}) per generated token, then `done` ({"text", "stats", ...}),
("token_ids" too with return_token_ids). The text is tokenizer.decode(generated ids,
skip_special_tokens=True), unstripped, less a last character cut by max_tokens (token_ids keep its
bytes); the token pieces concatenate to it (a piece is "" while a UTF-8 character is incomplete;
"token" is null on a piece flushed at EOS).
or `error` ({"detail"}) if the engine fails mid-stream. Errors found before the first token
(validation, unknown chunk ids, token limits, a full queue) are plain HTTP errors instead.

`turn` runs a chat turn (the OpenAI routes) as a sequence too: an agent template on the service's
AgentRuntime, prefilled on its prefill path, decoded with stop strings, its reply's KV stored when it
finishes (api/sequences.py turn_sequence); see `TurnSpec`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from chunkcache.agents.template import AgentTemplate, Message
from chunkcache.api.schemas import GenerationOptions
from chunkcache.api.service import ChunkCacheService, RequestError
from chunkcache.api.sequences import ClientGone, next_event, rag_sequence, turn_sequence
from chunkcache.api.worker import ModelWorker, Timed
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.request import BlendRequest
from chunkcache.runner.decode import SamplingConfig
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


@dataclass(frozen=True)
class TurnSpec:
    """One chat turn: template + values bind to the prompt (agents/template.py), prefilled in cfg's mode; decoding
    per sampling stops at EOS, max tokens or a stop string; the reply is then stored as a chunk (its KV for the
    modes that place KV), so the next request that quotes it reuses it."""

    template: AgentTemplate
    values: dict[str, str | Message]
    cfg: BlendConfig
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()


def _bind(svc: ChunkCacheService, spec: TurnSpec, field: str) -> BlendRequest:
    """The turn's prompt, checked against the server's limits (RequestError naming `field` or max_tokens)."""
    rt = svc.runtime
    try:
        req = rt.compile(spec.template).bind(spec.values, rt.tokenizer, rt.runner.max_positions)
    except ValueError as err:
        raise RequestError(field, str(err), 400) from None
    limit = min(svc.cfg.max_prompt_tokens, rt.runner.max_positions)
    if req.num_tokens > limit:
        raise RequestError(field, f"prompt of {req.num_tokens} tokens exceeds the limit of {limit}", 413)
    if req.num_tokens + spec.sampling.max_new_tokens > rt.runner.max_positions:
        raise RequestError("max_tokens", f"prompt of {req.num_tokens} tokens + {spec.sampling.max_new_tokens} new "
                                         f"tokens exceeds the model context of {rt.runner.max_positions}", 400)
    return req


def _finished(event: dict) -> dict:
    stats = {k: v for k, v in event["done"].items() if k != "slots"}
    return {"text": event["text"], "token_ids": event["token_ids"], "prompt_tokens": stats.get("prompt_tokens", 0),
            "finish_reason": event["finish_reason"], "stats": stats}


async def turn(request: Request, build: Callable[[], TurnSpec], field: str,  # type: ignore[no-untyped-def]
               stream: bool):
    """Run the chat turn build() describes as a scheduler sequence (build and the binding run as an exclusive
    call; RequestError for bad input, naming `field` for the prompt). A client that disconnects cancels it.
    stream=False: {"text", "token_ids", "prompt_tokens", "finish_reason", "stats"} (a Response 499 if the client
    left). stream=True: once the first event is in, an async iterator of {"text": piece} ... then that dict under
    "done", or {"error": message}; errors before the first event raise here."""
    svc: ChunkCacheService = request.app.state.service
    metrics = request.app.state.metrics
    loop = asyncio.get_running_loop()

    def admit() -> Handle:
        spec = build()
        req = _bind(svc, spec, field)
        return request.app.state.scheduler.submit(turn_sequence(svc, req, spec.cfg, spec.sampling, list(spec.stop)),
                                                  loop)

    handle: Handle = (await submit(request, admit)).value
    try:
        event = await next_event(request, handle)
        if "error" in event:
            raise event["error"]
        while not stream and "done" not in event:
            event = await next_event(request, handle)
            if "error" in event:
                raise event["error"]
    except ClientGone:
        return Response(status_code=499)
    finally:
        if not stream:
            handle.cancel()  # a no-op once done
    if not stream:
        out = _finished(event)
        metrics.observe_generation(out["stats"])
        return out

    async def pieces(event: dict) -> AsyncIterator[dict]:
        try:
            while True:
                if "error" in event:
                    yield {"error": str(event["error"])}
                    return
                if "done" in event:
                    out = _finished(event)
                    metrics.observe_generation(out["stats"])
                    yield {"done": out}
                    return
                if event["text"]:
                    yield {"text": event["text"]}
                event = await handle.get()
        finally:
            handle.cancel()

    return pieces(event)
