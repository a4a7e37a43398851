"""OpenAI-compatible endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

Responses have OpenAI's shapes (chat.completion, chat.completion.chunk, text_completion, list of model);
streams are server-sent events `data: {...}` ending with `data: [DONE]`: a first chunk with the role, one
chunk per text piece, a last chunk with `finish_reason` (stop | length), and with
`stream_options.include_usage` a usage chunk with no choices. `usage.prompt_tokens_details.cached_tokens`
counts the prompt tokens whose KV was reused (chunkcache's `reused_tokens`). The extension field
`chunkcache` (on the response, on the stream's finish chunk and on its usage chunk) holds the turn's
stats: mode, ttft_s, engine_s, queue_s, prompt/context/reused/recomputed tokens, chunk hits and misses,
tiers hit, fallbacks, attention. Chunk boundaries and default modes: api/openai_layout.py. Each route's
model work is one `generation.turn` call (prefill + decode + store the reply); errors are OpenAI's
error objects (api/openai_errors.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from chunkcache.agents.chat_layout import chat_template
from chunkcache.api import generation
from chunkcache.api.config import ServerConfig
from chunkcache.api.openai_layout import PLAIN_MODE, chat_messages, completion_template
from chunkcache.api.openai_schemas import ChatCompletionRequest, CompletionRequest
from chunkcache.api.service import ChunkCacheService, RequestError
from chunkcache.blend.config import UNFUSED_MODE, BlendConfig
from chunkcache.runner.decode import SamplingConfig

router = APIRouter(prefix="/v1")
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
CREATED = int(time.time())
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def model_id(cfg: ServerConfig) -> str:
    """The served model's id: the model path or hub id as configured (default model: its name)."""
    return cfg.engine.model_path or DEFAULT_MODEL


def _check_model(cfg: ServerConfig, model: str) -> str:
    served = model_id(cfg)
    if model not in (served, Path(served).name):
        raise RequestError("model", f"the model {model!r} does not exist on this server (it serves {served!r})",
                           404)
    return served


def _blend(mode: str | None, marked: bool, body: ChatCompletionRequest | CompletionRequest) -> BlendConfig:
    """A chat turn has no corpus to fuse its chunks with: marked chunks default to the plain-entry default."""
    return BlendConfig.named(mode or (UNFUSED_MODE if marked else PLAIN_MODE), recompute_ratio=body.recompute_ratio,
                             decode_correction=body.decode_correction,
                             decode_correction_steps=body.decode_correction_steps)


def _sampling(cfg: ServerConfig, body: ChatCompletionRequest | CompletionRequest, field: str) -> SamplingConfig:
    n = body.new_tokens if body.new_tokens is not None else cfg.max_new_tokens
    if n > cfg.max_new_tokens:
        raise RequestError(field, f"{n} exceeds this server's limit of {cfg.max_new_tokens}", 400)
    return SamplingConfig(n, body.temperature, body.top_p, body.seed)


def _usage(out: dict) -> dict:
    n = len(out["token_ids"])
    return {"prompt_tokens": out["prompt_tokens"], "completion_tokens": n, "total_tokens": out["prompt_tokens"] + n,
            "prompt_tokens_details": {"cached_tokens": int(out["stats"].get("reused_tokens", 0))}}


def _head(kind: str, served: str, svc: ChunkCacheService) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": served,
            "system_fingerprint": f"fp_{svc.engine.runner.fingerprint[:12]}"}


def _data(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


async def _sse(pieces: AsyncIterator[dict], head: dict, choice: Callable[[str | None, str | None], dict],
               include_usage: bool, first: dict | None) -> AsyncIterator[bytes]:
    """The stream: `first` (the role chunk), a chunk per piece, the finish chunk, the usage chunk, [DONE]."""
    if first is not None:
        yield _data({**head, "choices": [first]})
    async for event in pieces:
        if "error" in event:
            yield _data({"error": {"message": event["error"], "type": "server_error", "param": None, "code": None}})
            return
        if "text" in event:
            yield _data({**head, "choices": [choice(event["text"], None)]})
            continue
        out = event["done"]
        extra = {"usage": None} if include_usage else {}
        yield _data({**head, "choices": [choice(None, out["finish_reason"])], **extra, "chunkcache": out["stats"]})
        if include_usage:
            yield _data({**head, "choices": [], "usage": _usage(out), "chunkcache": out["stats"]})
    yield _data("[DONE]")


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": [{"id": model_id(request.app.state.config), "object": "model",
                                        "created": CREATED, "owned_by": "chunkcache"}]}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):  # type: ignore[no-untyped-def]
    """A chat turn over the model's chat template; every message (and part, document) a reusable chunk."""
    cfg: ServerConfig = request.app.state.config
    svc: ChunkCacheService = request.app.state.service
    served = _check_model(cfg, body.model)
    messages, marked = chat_messages(body, cfg.blend_special_str)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    sampling, blend = _sampling(cfg, body, field), _blend(body.mode, marked, body)

    def build() -> generation.TurnSpec:
        try:
            tpl, values = chat_template(svc.runtime.tokenizer, messages, svc.runtime.generated_ids)
        except ValueError as err:
            raise RequestError("messages", str(err), 400) from None
        return generation.TurnSpec(tpl, values, blend, sampling, tuple(body.stop))

    out = await generation.turn(request, build, "messages", body.stream)
    if isinstance(out, Response):  # the client left
        return out
    head = _head("chat.completion.chunk" if body.stream else "chat.completion", served, svc)
    if not body.stream:
        message = {"role": "assistant", "content": out["text"], "refusal": None}
        return {**head, "choices": [{"index": 0, "message": message, "logprobs": None,
                                     "finish_reason": out["finish_reason"]}],
                "usage": _usage(out), "chunkcache": out["stats"]}

    def choice(text: str | None, finish: str | None) -> dict:
        return {"index": 0, "delta": {"content": text} if text is not None else {}, "logprobs": None,
                "finish_reason": finish}

    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    return StreamingResponse(_sse(out, head, choice, body.include_usage, first), media_type="text/event-stream",
                             headers=SSE_HEADERS)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):  # type: ignore[no-untyped-def]
    """A completion of the prompt as text (no chat template); documents and separators mark chunks."""
    cfg: ServerConfig = request.app.state.config
    svc: ChunkCacheService = request.app.state.service
    served = _check_model(cfg, body.model)
    sampling = _sampling(cfg, body, "max_tokens")

    def build() -> generation.TurnSpec:
        tpl, values, marked = completion_template(body.prompt, body.documents, cfg.blend_special_str,
                                                  svc.runtime.tokenizer)
        return generation.TurnSpec(tpl, values, _blend(body.mode, marked, body), sampling,
                                   tuple(body.stop))

    out = await generation.turn(request, build, "prompt", body.stream)
    if isinstance(out, Response):  # the client left
        return out
    head = _head("text_completion", served, svc)

    def choice(text: str | None, finish: str | None) -> dict:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    if not body.stream:
        return {**head, "choices": [choice(out["text"], out["finish_reason"])], "usage": _usage(out),
                "chunkcache": out["stats"]}
    return StreamingResponse(_sse(out, head, choice, body.include_usage, None), media_type="text/event-stream",
                             headers=SSE_HEADERS)
