"""Request bodies of the OpenAI-compatible routes (pydantic), with chunkcache's extension fields.

OpenAI's fields that chunkcache serves: model, messages / prompt, max_tokens, max_completion_tokens,
temperature, top_p, seed, stop (a string or up to 4), n (1 only), stream, stream_options.include_usage,
user, and the fields OpenAI clients send with neutral values (frequency_penalty / presence_penalty 0,
logprobs false, no tools, response_format text...). A field that would change the answer in a way
chunkcache does not implement is refused by name (400), and so is any unknown field.
Extensions: `documents` (chunk texts, see api/openai_layout.py), `mode` (a BlendConfig.named name; default:
`prefix` when the request marks no chunk, otherwise `blend`, the default for requests without a corpus to fuse
with: blend/config.UNFUSED_MODE), `recompute_ratio`, `decode_correction`, `decode_correction_steps`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from chunkcache.api.schemas import MAX_TEXT_CHARS, CorrectionSteps, Text
from chunkcache.blend.config import check_mode_name

_OPEN = ConfigDict(extra="forbid", allow_inf_nan=False)


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Stop = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_unicode)]
Content = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]


class TextPart(BaseModel):
    """One content part of a message; only text parts are served (each one chunk)."""

    model_config = _OPEN
    type: Literal["text"]
    text: Content


class ChatMessageIn(BaseModel):
    model_config = _OPEN
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | list[TextPart] | None = None
    name: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_unicode)] | None = None
    tool_call_id: str | None = None
    refusal: None = None

    @model_validator(mode="after")
    def _has_content(self) -> "ChatMessageIn":
        if self.content is None or (isinstance(self.content, list) and not self.content):
            raise ValueError("content: a message needs text content (tool calls are not served)")
        return self


class StreamOptions(BaseModel):
    model_config = _OPEN
    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Neutral(BaseModel):
    """Fields OpenAI clients send, accepted only with the value that leaves the answer unchanged."""

    model_config = _OPEN
    frequency_penalty: Literal[0] | None = None
    presence_penalty: Literal[0] | None = None
    logprobs: Literal[False] | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=0)
    user: Annotated[str, Field(max_length=256)] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None


class _Sampling(_Neutral):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1)
    stop: Stop | list[Stop] | None = Field(None, validate_default=True,
                                           description="up to 4 sequences; the text ends before one")
    stream: bool = False
    stream_options: StreamOptions | None = None
    documents: list[Text] | None = Field(None, min_length=1, max_length=256,
                                         description="chunkcache: chunk texts placed before the question")
    mode: str | None = Field(None, description="chunkcache: blend mode (default: prefix without chunks, else "
                                               "blend)")
    recompute_ratio: float = Field(0.15, ge=0.0, le=1.0, description="chunkcache: for the blend modes")
    decode_correction: int = Field(0, ge=0, le=4096, description="chunkcache: prompt tokens recomputed per "
                                   "decode step until the cache is full prefill's (0: none)")
    decode_correction_steps: CorrectionSteps = Field(0, description="chunkcache: the same correction, finishing "
                                                     "within this many decode steps (0: none)")

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is served, got {n}")
        return n

    @field_validator("stop")
    @classmethod
    def _four(cls, stop: str | list[str] | None) -> list[str]:
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stop) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stop)}")
        return stop

    @field_validator("mode")
    @classmethod
    def _mode(cls, mode: str | None) -> str | None:
        return check_mode_name(mode) if mode is not None else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    top_logprobs: Literal[0] | None = None
    tools: list[dict] | None = Field(None, max_length=0)
    tool_choice: Literal["none", "auto"] | None = None
    response_format: dict | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict | None) -> dict | None:
        if fmt is not None and fmt.get("type") != "text":
            raise ValueError(f"only {{'type': 'text'}} is served, got {fmt.get('type')!r}")
        return fmt

    @property
    def new_tokens(self) -> int | None:
        """max_completion_tokens, else max_tokens (None: the server's default)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Annotated[Content, Field(min_length=1)] | Annotated[list[Annotated[Content, Field(min_length=1)]],
                                                                Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None
    max_tokens: int | None = Field(16, ge=1, le=8192)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        return prompt if isinstance(prompt, str) else prompt[0]

    @property
    def new_tokens(self) -> int | None:
        return self.max_tokens

