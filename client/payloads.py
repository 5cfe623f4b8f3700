"""Typed payloads into and out of every task.

Requests are strict (no coercion of "5" into 5, no unknown fields) because a
caller's mistake should come back as a clear error, not as a silently different
request. Results are what the worker stored in Redis, rebuilt with
`model_validate` on the caller's side.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# A batch bigger than this is a bulk job, which belongs to the re-embed runner.
MAX_BATCH_TEXTS = 512


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or only whitespace")
    return text


NonBlankText = Annotated[str, AfterValidator(_not_blank)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EmbedRequest(_Request):
    text: NonBlankText


class EmbedBatchRequest(_Request):
    texts: list[NonBlankText] = Field(min_length=1, max_length=MAX_BATCH_TEXTS)


class ReasonRequest(_Request):
    prompt: NonBlankText
    system: Optional[str] = None
    max_tokens: int = Field(default=512, ge=1, le=32768)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=8)


class ServerTiming(BaseModel):
    """What the model server reported (or, for embeddings, what we measured around it)."""

    prompt_tokens: int
    generated_tokens: int = 0
    prompt_ms: Optional[float] = None
    generated_ms: Optional[float] = None
    # Round trip of the HTTP request, measured by the worker.
    request_ms: float
    tokens_per_second: Optional[float] = None
    cached_tokens: Optional[int] = None


class TaskTiming(BaseModel):
    task: str
    queue: str
    model: str
    enqueued_at: Optional[datetime] = None
    started_at: datetime
    finished_at: datetime
    # None when the publisher did not stamp the message (see routes.ENQUEUED_AT_HEADER).
    queue_wait_ms: Optional[float] = None
    run_ms: float
    server: ServerTiming


class EmbeddingResult(BaseModel):
    embedding: list[float]
    dimension: int
    model: str
    timing: TaskTiming


class EmbeddingBatchResult(BaseModel):
    embeddings: list[list[float]]
    dimension: int
    model: str
    timing: TaskTiming


class ReasoningResult(BaseModel):
    text: str
    finish_reason: Optional[str] = None
    model: str
    timing: TaskTiming
