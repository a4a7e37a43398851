"""The FastAPI application: `create_app(ServerConfig)`; run it with uvicorn (`chunkcache serve`)."""

from __future__ import annotations

import asyncio
import secrets
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from chunkcache.api.config import ServerConfig
from chunkcache.api.jobs import JobRegistry
from chunkcache.api.metrics import ApiMetrics
from chunkcache.api.middleware import ApiKeyMiddleware, ServingMiddleware
from chunkcache.api.openai_errors import error_response, is_openai, is_tag
from chunkcache.api.openai_routes import router as openai_router
from chunkcache.api.routes import router
from chunkcache.api.schemas import Health
from chunkcache.api.service import ChunkCacheService, RequestError
from chunkcache.api.worker import ModelWorker, QueueFull, WorkerClosed
from chunkcache.serving import Scheduler

_bearer = HTTPBearer(auto_error=False, description="API key, when the server has one (--api-key / "
                                                   "$CHUNKCACHE_API_KEY)")


async def require_api_key(request: Request,
                          cred: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    key = request.app.state.config.api_key
    if key is None:
        return
    if cred is None or not secrets.compare_digest(cred.credentials.encode(), key.encode()):
        raise HTTPException(401, "authorization: a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})


def _field(loc: tuple, drop_tags: bool = False) -> str:
    """("body", "chunks", 0, "text") -> "chunks.0.text"; the location prefix is dropped, and with drop_tags pydantic's
    union-member tags ("str", "list[...]")."""
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc)
             if not (drop_tags and is_tag(p))]
    return ".".join(parts) or "body"


def _reply(request: Request, status: int, detail: str, field: str | None, headers: dict[str, str] | None = None,
           **extra: object) -> JSONResponse:
    """An error response: {"detail", "field"} on the native routes, OpenAI's error object under /v1/."""
    if is_openai(request.url.path):
        return error_response(status, detail, field, headers=headers)
    return JSONResponse({"detail": detail, "field": field, **extra}, status_code=status, headers=headers)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        tags = is_openai(request.url.path)
        errors = [{"field": _field(tuple(e.get("loc", ())), tags), "message": e.get("msg", ""), "type": e.get("type")}
                  for e in exc.errors()]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return _reply(request, 422, message, errors[0]["field"] if errors else None, errors=errors)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _reply(request, exc.status, str(exc), exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if is_openai(request.url.path):
            return error_response(exc.status_code, str(exc.detail), headers=exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        request.app.state.metrics.refused.labels("queue_full").inc()
        return _reply(request, 429, str(exc), None, {"Retry-After": "1"})

    @app.exception_handler(WorkerClosed)
    async def closing(request: Request, exc: WorkerClosed) -> JSONResponse:
        request.app.state.metrics.refused.labels("shutting_down").inc()
        return _reply(request, 503, str(exc), None)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_away(request: Request, exc: DBAPIError) -> JSONResponse:
        request.app.state.metrics.refused.labels("database_unavailable").inc()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        return _reply(request, 503, f"catalog database unavailable ({reason}); retry shortly", None,
                      {"Retry-After": "2"})

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return _reply(request, 422, str(exc), None)


def create_app(cfg: ServerConfig, service: ChunkCacheService | None = None) -> FastAPI:
    """service: an already-built service (tests, embedding in another app); default: built at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.service = service or await asyncio.to_thread(ChunkCacheService, cfg)
        app.state.scheduler = Scheduler(app.state.service.engine.runner, cfg.scheduler)
        app.state.worker = ModelWorker(app.state.scheduler)  # exclusive calls between the scheduler's steps
        app.state.jobs = JobRegistry(cfg.max_jobs, cfg.keep_jobs, cfg.jobs_url, cfg.job_stale_s)
        try:
            yield
        finally:
            app.state.worker.close()
            app.state.jobs.close()
            app.state.service.close()

    app = FastAPI(title="chunkcache", version="0.1.0", lifespan=lifespan,
                  description="Reuse the KV cache of chunks wherever they land in the prompt (CacheBlend).")
    app.state.config = cfg

    def store_stats() -> dict | None:
        svc = getattr(app.state, "service", None)
        stats = getattr(getattr(svc, "store", None), "stats", None)
        return stats() if stats else {"tiers": {}}

    app.state.metrics = ApiMetrics(store_stats, lambda: app.state.worker.depth if hasattr(app.state, "worker") else 0)
    app.add_middleware(ApiKeyMiddleware, api_key=cfg.api_key)  # inner: runs after the size check and counting
    app.add_middleware(ServingMiddleware, max_body_bytes=cfg.max_body_bytes, metrics=app.state.metrics)
    _install_handlers(app)
    app.include_router(router, dependencies=[Depends(require_api_key)])
    app.include_router(openai_router, dependencies=[Depends(require_api_key)])

    @app.get("/healthz", response_model=Health)
    async def healthz(request: Request) -> Health:
        svc: ChunkCacheService = request.app.state.service
        att = svc.engine.runner.attention
        return Health(status="ok", model=cfg.engine.model_path or "SmolLM2-135M-Instruct",
                      fingerprint=svc.engine.runner.fingerprint, queue_depth=request.app.state.worker.depth,
                      store="disk" if cfg.persistent else "memory", attention=att.describe(),
                      attention_choices={n: d.choice for n, d in att.decisions.items()},
                      linear=svc.engine.runner.linear.describe(),
                      attention_precision=svc.engine.runner.attention_precision)

    @app.get("/metrics", dependencies=[Depends(require_api_key)],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics(request: Request) -> Response:
        """Prometheus text format."""
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
