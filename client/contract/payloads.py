"""Typed payloads into and out of every task.

Requests are strict (no coercion of "5" into 5, no unknown fields) because a
caller's mistake should come back as a clear error, not as a silently different
request. Results are what the worker stored in Redis, rebuilt with
`model_validate` on the caller's side.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Optional

import json

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from athena_client.contract.limits import DEFAULT_LIMITS, capped
from athena_client.contract.vectors import Vector

# A batch bigger than this is a bulk job, which belongs to the re-embed runner.
MAX_BATCH_TEXTS = DEFAULT_LIMITS.batch_texts
# The metrics sample a generation's prompt rate is kept under, for the compression gate.
PROMPT_MS_PER_TOKEN = "prompt_ms_per_token"




def _not_unicode(text: str) -> Optional[str]:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone UTF-16 surrogate ("\\ud800") is no Unicode text; no server or store can take it.
        return f"text holds a lone UTF-16 surrogate at position {exc.start}"
    return None


def text_problem(text: str) -> Optional[str]:
    """Why `text` cannot be embedded or reasoned over, or None: not Unicode, blank, or invisible."""
    if problem := _not_unicode(text):
        return problem
    if not text.strip():
        return "text is empty or only whitespace"
    if not any(c.isprintable() and not c.isspace() for c in text):
        return "text has no visible character (only control characters such as NUL)"
    return None


def unicode_text(text: str) -> str:
    if problem := _not_unicode(text):
        raise ValueError(problem)
    return text


def _not_blank(text: str) -> str:
    problem = text_problem(text)
    if problem:
        raise ValueError(problem)
    return text


UnicodeText = Annotated[str, AfterValidator(unicode_text)]
NonBlankText = Annotated[UnicodeText, AfterValidator(_not_blank)]
ShortText = Annotated[UnicodeText, capped("short_chars")]
PromptText = Annotated[UnicodeText, capped("prompt_chars")]
EmbedText = Annotated[NonBlankText, capped("embed_text_chars")]


class _Request(BaseModel):
    # No NaN or infinity: JSON from another client may carry them, and no bound holds against NaN.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class NoArguments(_Request):
    """The payload of a task that takes none (health, status): anything sent is refused."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}]})


# What to do with a text longer than the embedding server takes in one input:
# refuse it (InputTooLong), embed its first window only, or embed every window
# and keep their normalised mean. A vector of a cut text stands for less than
# the text, so the interactive calls refuse unless asked; jobs chunk.
LongTextPolicy = Literal["fail", "truncate", "chunk"]
# How a vector was made, when not from the whole text in one input.
VectorNote = Literal["truncated", "chunked"]


# What a text is embedded for. Models such as nomic-embed-text or e5 were
# trained with one prefix before what is stored ("document") and another before
# what is searched with ("query"); the worker adds the one its model's profile
# names. Stores hold documents, so that is the default.
EmbedPurpose = Literal["document", "query"]
# A Matryoshka size to cut the vectors to (one the lane's model allows); None: the lane's own size.
EmbedDimensions = Optional[Annotated[int, Field(ge=1, le=65536)]]


class EmbedRequest(_Request):
    text: EmbedText
    long_text: LongTextPolicy = "fail"
    purpose: EmbedPurpose = "document"
    dimensions: EmbedDimensions = None


class EmbedBatchRequest(_Request):
    texts: Annotated[list[EmbedText], Field(min_length=1), capped("batch_texts")]
    long_text: LongTextPolicy = "fail"
    purpose: EmbedPurpose = "document"
    dimensions: EmbedDimensions = None


class RerankRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"query": "why did the nightly backup fail?", "documents": ["lunch on Thursday is at noon", "the backup failed: the disk was full"]}]})

    query: EmbedText
    documents: Annotated[list[EmbedText], Field(min_length=1), capped("batch_texts")]
    # The best `top_n`, best first; None: every document.
    top_n: Optional[Annotated[int, Field(ge=1)]] = None
    long_text: LongTextPolicy = "fail"


class ReasonRequest(_Request):
    prompt: Annotated[NonBlankText, capped("prompt_chars")]
    system: Optional[PromptText] = None
    max_tokens: int = Field(default=512, ge=1, le=32768)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    stop: list[Annotated[ShortText, Field(min_length=1)]] = Field(default_factory=list, max_length=8)
    # Hold the answer to this JSON schema (llama.cpp turns it into a grammar),
    # or to this GBNF grammar (athena_client.contract.grammar makes compact JSON ones).
    json_schema: Optional[dict[str, Any]] = None
    grammar: Optional[Annotated[UnicodeText, Field(min_length=1), capped("schema_chars")]] = None
    # Write each piece of the answer to the task's Redis stream as the server
    # writes it (`AthenaClient.reason_stream` reads it); off, nothing is written there.
    stream: bool = False

    @model_validator(mode="after")
    def _one_constraint(self) -> "ReasonRequest":
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError("give json_schema or grammar, not both")
        return self

    @field_validator("json_schema", mode="after")
    @classmethod
    def _schema_size(cls, schema: Optional[dict[str, Any]], info: ValidationInfo) -> Optional[dict[str, Any]]:
        if schema is not None:
            capped("schema_chars").func(json.dumps(schema), info)
        return schema


class CompressRequest(_Request):
    """Compress `context`; `instruction` and `question` are kept as they are.

    Give either `rate` (the share of tokens to keep, in (0, 1]) or
    `target_tokens`; with neither, half the tokens are kept.
    """

    context: Annotated[NonBlankText, capped("context_chars")]
    instruction: PromptText = ""
    question: PromptText = ""
    rate: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    target_tokens: Optional[int] = Field(default=None, ge=1)
    force_tokens: Annotated[list[Annotated[NonBlankText, capped("short_chars")]], capped("list_items")] = Field(default_factory=list)

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
    # An embed that shared its request with other tasks' (a threaded embeddings
    # worker merges concurrent embeds): the texts in that request, and how long
    # this one waited for the server to be free. Its prompt_tokens are then its
    # share of the request's, by text length; request_ms is the whole request's.
    batch_texts: Optional[int] = None
    wait_ms: Optional[float] = None

    # A prompt mostly served from the server's cache says little about its rate.
    MIN_UNCACHED_TOKENS: ClassVar[int] = 16

    def prompt_ms_per_token(self) -> Optional[float]:
        """The server's time per prompt token it had to read (not from its cache);
        None where the server gave no prompt time or read too few tokens to tell."""
        uncached = self.prompt_tokens - (self.cached_tokens or 0)
        if self.prompt_ms is None or uncached < self.MIN_UNCACHED_TOKENS:
            return None
        return self.prompt_ms / uncached


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


def vector_space(model: str, profile: str, dimension: int) -> str:
    """The name of the space a vector lives in: vectors compare only within one.

    Two models, or one model under two profiles (prefixes) or cut to two sizes,
    make vectors that must not share an index, even at the same dimension.
    """
    return f"{model} [{profile}, {dimension}-d]"


class VectorOrigin(BaseModel):
    """What made a result's vectors: the model, its profile, the prefix sent before each text, their size."""

    model: str
    # The embedding profile (config/embedding_profiles.py) the worker applied; "" from an older worker.
    profile: str = ""
    purpose: EmbedPurpose = "document"
    # The text sent before each input (and before each window of a cut one).
    prefix: str = ""
    dimension: int

    @property
    def space(self) -> str:
        return vector_space(self.model, self.profile, self.dimension)


class EmbeddingResult(VectorOrigin, _Timed):
    embedding: Vector
    note: Optional[VectorNote] = None

    def metric_samples(self) -> dict[str, float]:
        return {"dimension": self.dimension}


class EmbeddingBatchResult(VectorOrigin, _Timed):
    embeddings: list[Vector]
    # notes[i] says how vector i was made when not from the whole text; empty when every one was.
    notes: list[Optional[VectorNote]] = []

    def metric_samples(self) -> dict[str, float]:
        return {"dimension": self.dimension}


class RankedDocument(BaseModel):
    # The document's position in the request.
    index: int
    # Its relevance to the query, higher first: -1 to 1 for a bi-encoder (cosine).
    score: float


class RerankResult(_Timed):
    results: list[RankedDocument]
    model: str
    profile: str
    # How the scores were made: "bi-encoder", the cosine of the query's vector
    # (embedded as a query) and each document's (as a document).
    method: Literal["bi-encoder"] = "bi-encoder"


class ReasoningResult(_Timed):
    text: str
    finish_reason: Optional[str] = None
    model: str

    @property
    def tokens(self) -> int:
        """Generated tokens, as the server counted them."""
        return self.timing.server.generated_tokens if self.timing.server else 0

    def metric_samples(self) -> dict[str, float]:
        # The compression gate's prompt rate (tasks/compression_gate.py), in the call's own record.
        rate = self.timing.server.prompt_ms_per_token() if self.timing.server else None
        return {} if rate is None else {PROMPT_MS_PER_TOKEN: rate}


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
