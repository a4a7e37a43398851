"""Request and response bodies (pydantic). Validation errors name the field (HTTP 422).

Inputs are strict: no string-to-number coercion, unknown fields refused, texts must hold
non-whitespace and be valid Unicode (no lone surrogates).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, model_validator

from chunkcache.blend.config import DEFAULT_MODE, MODES, BlendConfig
from chunkcache.blend.prompt import DEFAULT_SYSTEM

MAX_TEXT_CHARS = 200_000
MAX_QUERY_CHARS = 8_000
Mode = Literal[MODES]  # type: ignore[valid-type]  # the one list, in chunkcache.blend.config


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _one_correction(steps: int, info: ValidationInfo) -> int:
    """decode_correction_steps, declared after decode_correction: BlendConfig refuses both at once, naming them."""
    BlendConfig(decode_correction=info.data.get("decode_correction", 0), decode_correction_steps=steps)
    return steps


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_text)]
CorrectionSteps = Annotated[int, Field(ge=0, le=4096), AfterValidator(_one_correction)]
Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS), AfterValidator(_text)]
ChunkId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[0-9a-f]+$")]

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ChunkRef(BaseModel):
    """A stored chunk by id (from POST /chunks or /documents), or a text."""

    model_config = _STRICT
    id: ChunkId | None = None
    text: Text | None = None

    @model_validator(mode="after")
    def _one(self) -> "ChunkRef":
        if (self.id is None) == (self.text is None):
            raise ValueError("give exactly one of id or text")
        return self


def _chunk_kind(value: object) -> str:
    return "text" if isinstance(value, str) else "ref"


ChunkItem = Annotated[Annotated[Text, Tag("text")] | Annotated[ChunkRef, Tag("ref")], Discriminator(_chunk_kind)]


class GenerationOptions(BaseModel):
    model_config = _STRICT
    system: Query | None = Field(None, description=f"system prompt (default: {DEFAULT_SYSTEM!r})")
    mode: Mode = DEFAULT_MODE
    recompute_ratio: float = Field(0.15, ge=0.0, le=1.0)
    calibrated: bool = Field(False, description="use the recompute ratio `chunkcache calibrate` stored for the "
                                                "served model instead of recompute_ratio")
    decode_correction: int = Field(0, ge=0, le=4096, description="prompt tokens recomputed per decode step "
                                   "until the cache is full prefill's (0: none); TTFT unchanged, those steps cost more")
    decode_correction_steps: CorrectionSteps = Field(0, description="the same correction, finishing within this "
                                                     "many decode steps: ceil(pending prompt tokens / steps) per step "
                                                     "(0: none); instead of decode_correction")
    max_tokens: int = Field(32, ge=1, le=8192, description="new tokens at most (server limit applies)")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = Field(False, description="stream tokens as server-sent events")
    return_token_ids: bool = Field(False, description="also return the generated token ids (EOS excluded)")


class GenerateRequest(GenerationOptions):
    chunks: list[ChunkItem] = Field(min_length=1, max_length=256,
                                          description="chunk texts and/or {'id': stored chunk id} or {'text': ...}")
    query: Query


class RagRequest(GenerationOptions):
    query: Query
    k: int = Field(4, ge=1, le=64, description="chunks to retrieve")


class GenerationStats(BaseModel):
    mode: str
    ttft_s: float = Field(description="prefill time to the first token's logits")
    engine_s: float = Field(description="model worker time of this request (tokenize, prefill, decode)")
    queue_s: float = Field(description="time waiting for the model worker")
    prompt_tokens: int
    context_tokens: int
    reused_tokens: int
    recomputed_tokens: int
    recompute_fraction: float
    decode_pending: int = Field(0, description="prompt tokens decode recomputes (a correction's K per step)")
    chunk_hits: int
    chunk_misses: int
    tiers_hit: dict[str, int] = Field(description="store lookups answered per tier")
    generated_tokens: int
    fallbacks: list[str] = Field(default_factory=list)
    attention: str = Field("", description="attention implementation of the recompute pass: torch | cpp | triton")


class GenerateResponse(BaseModel):
    text: str = Field(description="tokenizer.decode(generated ids, skip_special_tokens=True), unstripped; a "
                                  "character cut by max_tokens is dropped (token_ids keep its bytes)")
    stats: GenerationStats
    token_ids: list[int] | None = Field(None, description="generated token ids (with return_token_ids)")


class RetrievedChunk(BaseModel):
    id: str
    score: float
    doc_id: str | None
    text: str


class RagResponse(GenerateResponse):
    chunks: list[RetrievedChunk]


class PutChunksRequest(BaseModel):
    model_config = _STRICT
    chunks: list[Text] = Field(min_length=1, max_length=256)
    doc_id: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    index: bool = Field(True, description="embed and index the chunks for /rag/answer")
    fused: bool = Field(True, description="also precompute each indexed chunk's fused entry behind its nearest "
                                          "indexed chunks (the fused modes; about 3x the plain precompute)")


class StoredChunk(BaseModel):
    id: str
    num_tokens: int
    doc_id: str | None
    created: datetime


class ChunkInfo(StoredChunk):
    text: str
    indexed: bool
    tiers: list[str] = Field(description="store tiers holding its KV in this server")


class PutChunksResponse(BaseModel):
    chunks: list[StoredChunk]


class DocumentIn(BaseModel):
    model_config = _STRICT
    text: Text
    id: Annotated[str, Field(min_length=1, max_length=512)] | None = None


class DocumentsRequest(BaseModel):
    model_config = _STRICT
    documents: list[DocumentIn] = Field(min_length=1, max_length=10_000)
    chunk_tokens: int = Field(256, ge=16, le=4096)
    overlap_tokens: int = Field(32, ge=0, le=1024)
    fused: bool = Field(True, description="also precompute each indexed chunk's fused entry behind its nearest "
                                          "indexed chunks (the fused modes; about 3x the plain precompute)")

    @model_validator(mode="after")
    def _overlap(self) -> "DocumentsRequest":
        if self.overlap_tokens * 2 >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be less than half of chunk_tokens")
        return self


class JobInfo(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed", "interrupted"]
    stage: str | None
    done: int
    total: int
    created: datetime
    finished: datetime | None
    result: dict | None = None
    error: str | None = None


class Health(BaseModel):
    status: str
    model: str
    fingerprint: str
    queue_depth: int
    store: str
    attention: str = ""  # which attention implementation runs and why (measured on this machine under auto)
    attention_choices: dict[str, str] = {}  # shape class -> torch | cpp | triton
    linear: str = ""  # what the decoder's linear layers compute in (linear_dtype), and the measurement behind it
    attention_precision: str = ""  # the prefill attention's products (attention_dtype) and the measurement behind it


class ErrorBody(BaseModel):
    detail: str | list
    field: str | None = None
