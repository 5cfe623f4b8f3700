"""Typed payloads into and out of every task.

Requests are strict (no coercion of "5" into 5, no unknown fields) because a
caller's mistake should come back as a clear error, not as a silently different
request. Results are what the worker stored in Redis, rebuilt with
`model_validate` on the caller's side.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# A batch bigger than this is a bulk job, which belongs to the re-embed runner.
MAX_BATCH_TEXTS = 512


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or only whitespace")
    return text


NonBlankText = Annotated[str, AfterValidator(_not_blank)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoArguments(_Request):
    """The payload of a task that takes none (health, status): anything sent is refused."""


# What to do with a text longer than the embedding server takes in one input:
# refuse it (InputTooLong), embed its first window only, or embed every window
# and keep their normalised mean. A vector of a cut text stands for less than
# the text, so the interactive calls refuse unless asked; jobs chunk.
LongTextPolicy = Literal["fail", "truncate", "chunk"]
# How a vector was made, when not from the whole text in one input.
VectorNote = Literal["truncated", "chunked"]


class EmbedRequest(_Request):
    text: NonBlankText
    long_text: LongTextPolicy = "fail"


class EmbedBatchRequest(_Request):
    texts: list[NonBlankText] = Field(min_length=1, max_length=MAX_BATCH_TEXTS)
    long_text: LongTextPolicy = "fail"


class ReasonRequest(_Request):
    prompt: NonBlankText
    system: Optional[str] = None
    max_tokens: int = Field(default=512, ge=1, le=32768)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=8)
    # Hold the answer to this JSON schema (llama.cpp turns it into a grammar),
    # or to this GBNF grammar (athena_client.grammar makes compact JSON ones).
    json_schema: Optional[dict[str, Any]] = None
    grammar: Optional[str] = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_constraint(self) -> "ReasonRequest":
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError("give json_schema or grammar, not both")
        return self


class CompressRequest(_Request):
    """Compress `context`; `instruction` and `question` are kept as they are.

    Give either `rate` (the share of tokens to keep, in (0, 1]) or
    `target_tokens`; with neither, half the tokens are kept.
    """

    context: NonBlankText
    instruction: str = ""
    question: str = ""
    rate: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    target_tokens: Optional[int] = Field(default=None, ge=1)
    force_tokens: list[NonBlankText] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _one_target(self) -> "CompressRequest":
        if self.rate is not None and self.target_tokens is not None:
            raise ValueError("give rate or target_tokens, not both")
        return self

    @property
    def effective_rate(self) -> Optional[float]:
        return 0.5 if self.rate is None and self.target_tokens is None else self.rate


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
    # None for work done inside the worker (compression) rather than by a server.
    server: Optional[ServerTiming] = None


class _Timed(BaseModel):
    timing: TaskTiming

    @property
    def latency_ms(self) -> float:
        """Queue wait plus run time: what Athena's in-process client called latency."""
        return (self.timing.queue_wait_ms or 0.0) + self.timing.run_ms


class EmbeddingResult(_Timed):
    embedding: list[float]
    dimension: int
    model: str
    note: Optional[VectorNote] = None

    def metric_samples(self) -> dict[str, float]:
        return {"dimension": self.dimension}


class EmbeddingBatchResult(_Timed):
    embeddings: list[list[float]]
    dimension: int
    model: str
    # notes[i] says how vector i was made when not from the whole text; empty when every one was.
    notes: list[Optional[VectorNote]] = []

    def metric_samples(self) -> dict[str, float]:
        return {"dimension": self.dimension}


class ReasoningResult(_Timed):
    text: str
    finish_reason: Optional[str] = None
    model: str

    @property
    def tokens(self) -> int:
        """Generated tokens, as the server counted them."""
        return self.timing.server.generated_tokens if self.timing.server else 0


class CompressionResult(BaseModel):
    """The prompt to send: instruction, compressed context and question.

    With `compressed` false, `compressed_prompt` is the original prompt and
    `reason` says why (compression off, its model missing).
    """

    compressed_prompt: str
    compressed: bool
    reason: Optional[str] = None
    original_tokens: int
    compressed_tokens: int
    # Achieved: compressed_tokens / original_tokens.
    ratio: float
    rate_requested: Optional[float] = None
    target_tokens: Optional[int] = None
    method: Optional[str] = None
    model: Optional[str] = None
    # Tokens are counted as the paid API counts them.
    tokenizer: str
    cache_hit: bool = False
    latency_ms: float
    tokens_saved: int
    money_saved_usd: float
    timing: TaskTiming

    @property
    def compression_ratio(self) -> float:
        """Athena's name for `ratio`."""
        return self.ratio

    def metric_totals(self) -> dict[str, float]:
        return {"tokens_saved": self.tokens_saved, "money_saved_usd": self.money_saved_usd}

    def metric_samples(self) -> dict[str, float]:
        return {"compression_ratio": self.ratio}


class CompressorStatus(BaseModel):
    ready: bool
    method: Optional[str] = None
    model: Optional[str] = None
    reason: Optional[str] = None
    load_ms: Optional[float] = None
