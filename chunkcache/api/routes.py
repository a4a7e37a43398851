"""Endpoints: generation, RAG, chunks, documents (ingestion jobs), jobs (and resuming an interrupted one)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Request, Response

from chunkcache.api import generation
from chunkcache.api.schemas import (ChunkInfo, DocumentsRequest, ErrorBody, GenerateRequest, GenerateResponse,
                                    JobInfo, PutChunksRequest, PutChunksResponse, RagRequest, RagResponse,
                                    RetrievedChunk, StoredChunk)
from chunkcache.api.jobs import NotResumable
from chunkcache.api.service import ChunkCacheService
from chunkcache.retrieval.chunking import ChunkingConfig
from chunkcache.retrieval.ingest import Document, Ingestor

router = APIRouter()
ERRORS = {c: {"model": ErrorBody} for c in (401, 404, 413, 422, 429, 503)}
SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
       "description": "with stream: true, server-sent events: token ... done"}
ChunkIdPath = Path(min_length=1, max_length=128, description="chunk id (its KV key)")


def _svc(request: Request) -> ChunkCacheService:
    return request.app.state.service


@router.post("/generate_with_chunks", response_model=GenerateResponse, responses={**ERRORS, 200: SSE})
async def generate_with_chunks(body: GenerateRequest, request: Request):  # type: ignore[no-untyped-def]
    """Answer `query` over `chunks` (texts and/or stored ids), reusing their cached KV per `mode`."""
    svc = _svc(request)
    return await generation.generate(request, lambda: (svc.resolve(body.chunks), {}), body.query, body)


@router.post("/rag/answer", response_model=RagResponse, responses={**ERRORS, 200: SSE})
async def rag_answer(body: RagRequest, request: Request):  # type: ignore[no-untyped-def]
    """Retrieve the top-k indexed chunks for `query`, then generate with blending over their KV."""
    svc = _svc(request)

    def texts() -> tuple[list[str], dict]:
        hits = svc.retrieve(body.query, body.k)
        if not hits:
            raise HTTPException(404, "index: no chunks are indexed yet (POST /chunks or /documents first)")
        found = [RetrievedChunk(id=h.key, score=h.score, doc_id=h.doc_id, text=h.text).model_dump() for h in hits]
        return [h.text for h in hits], {"chunks": found}

    return await generation.generate(request, texts, body.query, body)


@router.post("/chunks", status_code=201, response_model=PutChunksResponse, responses=ERRORS)
async def put_chunks(body: PutChunksRequest, request: Request) -> PutChunksResponse:
    """Store chunk texts and precompute their KV; the ids are usable in /generate_with_chunks."""
    svc = _svc(request)
    for i, text in enumerate(body.chunks):
        if len(text) > 4 * svc.cfg.max_prompt_tokens:  # cheap bound before tokenizing
            raise HTTPException(413, f"chunks[{i}]: text of {len(text)} characters is too long")

    def job():  # type: ignore[no-untyped-def]
        limit = min(svc.cfg.max_prompt_tokens, svc.engine.runner.max_positions)
        for i, text in enumerate(body.chunks):
            n = len(svc.engine.prompts.chunk_ids(text))
            if n + len(svc.engine.prompts.prefix_ids) > limit:
                raise HTTPException(413, f"chunks[{i}]: {n} tokens exceed the prompt limit of {limit}")
        return svc.put_chunks(body.chunks, body.doc_id, body.index, body.fused)

    records = (await generation.submit(request, job)).value
    return PutChunksResponse(chunks=[StoredChunk(id=r.key, num_tokens=r.num_tokens, doc_id=r.doc_id,
                                                 created=r.created) for r in records])


@router.get("/chunks/{chunk_id}", response_model=ChunkInfo, responses=ERRORS)
def get_chunk(request: Request, chunk_id: str = ChunkIdPath) -> ChunkInfo:
    svc = _svc(request)
    rec = svc.index.get(chunk_id)
    if rec is None:
        raise HTTPException(404, f"chunk_id: no stored chunk {chunk_id!r}")
    return ChunkInfo(id=rec.key, num_tokens=rec.num_tokens, doc_id=rec.doc_id, created=rec.created, text=rec.text,
                     indexed=rec.has_embedding, tiers=svc.chunk_tiers(rec.key))


@router.delete("/chunks/{chunk_id}", status_code=204, responses=ERRORS)
def delete_chunk(request: Request, chunk_id: str = ChunkIdPath) -> Response:
    """Forget the chunk: its text, its vector and its KV in every tier."""
    if not _svc(request).delete_chunk(chunk_id):
        raise HTTPException(404, f"chunk_id: no stored chunk {chunk_id!r}")
    return Response(status_code=204)


def _ingest(state, body: DocumentsRequest):  # type: ignore[no-untyped-def]
    """The work function of an ingestion job over body's documents."""
    docs = [Document(d.text, d.id) for d in body.documents]
    ingestor = Ingestor(state.service.engine, state.service.index,
                        ChunkingConfig(body.chunk_tokens, body.overlap_tokens), run=state.worker.call,
                        fused=body.fused)
    return lambda job: ingestor.ingest(docs, progress=job.progress).as_dict()


@router.post("/documents", status_code=202, response_model=JobInfo, responses=ERRORS)
def post_documents(body: DocumentsRequest, request: Request) -> JobInfo:
    """Ingest documents in the background: chunk, embed, index, precompute KV. Poll GET /jobs/{id}."""
    state = request.app.state
    job = state.jobs.start("ingest", _ingest(state, body), params=body.model_dump())
    return JobInfo(**job.as_dict())


@router.post("/jobs/{job_id}/resume", status_code=202, response_model=JobInfo,
             responses={**ERRORS, 409: {"model": ErrorBody}})
def resume_job(request: Request, job_id: str = Path(min_length=1, max_length=64)) -> JobInfo:
    """Run an interrupted (or failed) job again from its request, same id; chunks already precomputed are hits."""
    state = request.app.state
    try:
        job = state.jobs.resume(job_id, lambda kind, params: _ingest(state, DocumentsRequest(**params)))
    except LookupError:
        raise HTTPException(404, f"job_id: no job {job_id!r}") from None
    except NotResumable as err:
        raise HTTPException(409, f"job_id: {err}") from None
    return JobInfo(**job.as_dict())


@router.get("/jobs/{job_id}", response_model=JobInfo, responses=ERRORS)
def get_job(request: Request, job_id: str = Path(min_length=1, max_length=64)) -> JobInfo:
    job = request.app.state.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"job_id: no job {job_id!r}")
    return JobInfo(**job.as_dict())
