"""Errors of the OpenAI-compatible routes (`/v1/...`) in OpenAI's shape.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Validation errors answer 400 (OpenAI's status; the native routes answer 422) with `param` naming the
field ("messages.1.content", "temperature"); an unknown model 404 `model_not_found`; a missing or wrong
API key 401 `invalid_api_key`; a full queue 429 `rate_limit_exceeded`; shutting down or the catalog
database away 503. The app's exception handlers and middleware call `error_body` for every path under
`/v1/`, so the openai client raises its own typed errors (BadRequestError, NotFoundError, ...).
"""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse

PREFIX = "/v1/"
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "requests", 503: "server_error"}
_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}
_CODES = {401: "invalid_api_key", 413: "request_too_large", 429: "rate_limit_exceeded", 503: "service_unavailable"}


def is_openai(path: str) -> bool:
    """Whether a request path is one of the OpenAI-compatible routes."""
    return path.startswith(PREFIX) or path == PREFIX.rstrip("/")


def openai_status(status: int) -> int:
    """The status OpenAI answers where the native routes answer `status` (422 validation -> 400)."""
    return 400 if status == 422 else status


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object for a response of HTTP `status` (already mapped by openai_status)."""
    if code is None:
        code = "model_not_found" if (status, param) == (404, "model") else _CODES.get(status)
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else
                                                               "invalid_request_error"),
                      "param": param, "code": code}}


def error_bytes(status: int, message: str, param: str | None = None) -> bytes:
    """error_body as JSON bytes (for the ASGI middleware, which answers before FastAPI)."""
    return json.dumps(error_body(openai_status(status), message, param)).encode()


def is_tag(part: object) -> bool:
    """A pydantic union-member tag in an error location ("str", "list[TextPart]", "function-after[...]"): OpenAI's
    `param` names the field alone ("messages.0.content")."""
    return isinstance(part, str) and ("[" in part or "-" in part or part in _TAGS)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    status = openai_status(status)
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)
