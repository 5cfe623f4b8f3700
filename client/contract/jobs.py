"""Re-embedding jobs: what to re-embed, and how far a job has got.

A job reads a memory store, sends token-sized batches to the bulk embedding
lane, and writes each vector back with its vector space (model, profile and
size: `payloads.vector_space`) and the hash of the text it was computed from. Its state lives in Redis next to the task results, so
the CLI, Athena and Flower all see the same counts.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Literal, Optional, Union
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from athena_client.contract.limits import DEFAULT_LIMITS, capped
from athena_client.contract.payloads import EmbedDimensions, EmbedPurpose, LongTextPolicy, ShortText, VectorNote, VectorOrigin, _Timed
from athena_client.contract.vectors import Vector

# A SQL identifier we are willing to quote into DDL: plain lower-case names only.
SqlName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
MAX_BULK_TEXTS = DEFAULT_LIMITS.bulk_texts


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JsonlSource(_Spec):
    """A JSONL file of memories, one object per line, re-embedded into `output`.

    `output` ending in `.npy` (say `vectors.npy`) gets a float32 matrix plus
    `vectors.ids.jsonl` (one `{"id", "model", "profile", "space",
    "content_sha256"}` per matrix row, and `"note"` for a truncated or chunked
    vector), published together under `vectors.npy.manifest.json`; anything
    else gets JSONL lines `{"id", "model", "profile", "space",
    "content_sha256", "embedding"}`. Work done so far is kept in
    `<output>.state.sqlite`, which lets a re-run in the same vector space skip
    unchanged texts. An output holds one space: a job whose lane serves
    another is refused before it writes anything.
    """

    kind: Literal["jsonl"] = "jsonl"
    path: ShortText
    output: ShortText
    id_field: ShortText = "id"
    text_field: ShortText = "content"

    @model_validator(mode="after")
    def _distinct_paths(self) -> "JsonlSource":
        if self.path == self.output:
            raise ValueError("output must differ from path: the source is read while the output is written")
        return self


class PostgresSource(_Spec):
    """A table shaped like Athena's `memory_vectors` (`id BIGSERIAL`, `content TEXT`, `embedding`).

    Where the new vectors go:

    - by default, a side table the job creates (`side_table`, or
      `<table>__<model>`, `<table>__<model>_<n>` for a job that asks for
      `dimensions=n`), holding the row id, the vector, the vector space that
      made it (in its `model` column), the text's hash and how the vector was
      made; the user's table is not altered, and `athena-inference reembed
      switch` later swaps the vectors in;
    - with `target_column`, a new column of the user's table (created as
      `vector(n)` with pgvector, `real[]` without), with the bookkeeping in
      `<target>_model` (the space), `<target>_content_sha256` and
      `<target>_note` beside it;
    - with `in_place`, the column search reads (`embedding_column`): only when
      the model's dimension equals every existing vector's, with the
      bookkeeping in the side table.

    Each place holds vectors of one space (`athena_client.contract.payloads.vector_space`:
    model, profile, size): a job whose lane serves another space than the
    vectors already there is refused before it writes anything.

    The connection is `connection`, a name the process running the job
    resolves from its own environment (`ATHENA_POSTGRES_<NAME>`), or a `dsn`
    without a password (libpq reads PGPASSWORD or ~/.pgpass): a job's request
    is kept in Redis, so it never holds a password. `where` limits the job to
    rows whose columns equal the values given (sent as bound parameters).
    """

    kind: Literal["postgres"] = "postgres"
    connection: Optional[SqlName] = None
    dsn: Optional[ShortText] = None
    table: SqlName = "memory_vectors"
    id_column: SqlName = "id"
    content_column: SqlName = "content"
    embedding_column: SqlName = "embedding"
    target_column: Optional[SqlName] = None
    in_place: bool = False
    side_table: Optional[SqlName] = None
    where: dict[SqlName, Union[StrictBool, StrictInt, Annotated[StrictStr, capped("short_chars")]]] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _one_place(self) -> "PostgresSource":
        if (self.connection is None) == (self.dsn is None):
            raise ValueError("give a connection name or a dsn, not both and not neither")
        if self.dsn is not None and dsn_has_password(self.dsn):
            raise ValueError(
                "the dsn holds a password, which would be stored with the job in Redis; put the DSN in "
                "ATHENA_POSTGRES_<NAME> on the process that runs the job and pass connection=<name> "
                "(--connection NAME), or leave the password to PGPASSWORD or ~/.pgpass"
            )
        if self.in_place and self.target_column is not None:
            raise ValueError("in_place writes into embedding_column; target_column writes into a new column: choose one")
        if self.target_column is not None and self.target_column == self.embedding_column:
            raise ValueError(f"target_column is the column search reads ({self.embedding_column}); to write there, use in_place")
        return self

    @property
    def mode(self) -> Literal["side_table", "column", "in_place"]:
        if self.in_place:
            return "in_place"
        return "column" if self.target_column is not None else "side_table"


def dsn_has_password(dsn: str) -> bool:
    """Whether a libpq connection string (URL or key=value form) carries a password."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return bool(parts.password) or "password" in {k.lower() for k, _ in parse_qsl(parts.query)}
    return re.search(r"(^|\s)password\s*=", dsn, re.IGNORECASE) is not None


StoreSpec = Annotated[Union[JsonlSource, PostgresSource], Field(discriminator="kind")]


class ReembedRequest(_Spec):
    source: StoreSpec
    # Refuse to write if the lane serves another model than this (e.g. after a
    # swap): a served model name ("nomic-embed-text-v1.5"), or a whole vector
    # space ("nomic-embed-text-v1.5 [nomic-embed-text-v1.5, 256-d]").
    expected_model: Optional[ShortText] = None
    # A Matryoshka size for the job's vectors, one the bulk lane's model allows
    # (its worker checks it); None: the lane's own size.
    dimensions: EmbedDimensions = None
    # A batch closes at this many (estimated) tokens or texts, whichever comes first.
    batch_tokens: int = Field(4096, ge=64, le=1_000_000)
    batch_texts: int = Field(256, ge=1, le=MAX_BULK_TEXTS)
    # Batches in flight at once; also the most the bulk queue may hold before the runner waits.
    window: int = Field(4, ge=1, le=64)
    # A memory with no vector is invisible to search, so a job embeds an
    # over-long text in windows by default (see LongTextPolicy).
    long_text: LongTextPolicy = "chunk"


class ReembedJobRef(BaseModel):
    """The `athena.reembed` task's payload: the job is created in Redis first, with its request."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    job_id: Annotated[ShortText, Field(min_length=1)]


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHING = "finishing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ItemError(BaseModel):
    """One row that got no vector, and why."""

    id: Union[int, str]
    error: str
    message: str


class JobCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    # Of `completed`: vectors made from windows of an over-long text, or from its first window only.
    chunked: int = 0
    truncated: int = 0

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.skipped


class JobState(BaseModel):
    job_id: str
    status: JobStatus
    request: ReembedRequest
    counts: JobCounts = JobCounts()
    # What made the job's vectors, as the bulk lane answered its probe: the
    # served model's name (for display), the embedding profile the worker
    # applied, the vectors' size, and their space (`vector_space`), the tag
    # every written vector carries and the one thing compared.
    model: Optional[str] = None
    profile: Optional[str] = None
    dimension: Optional[int] = None
    space: Optional[str] = None
    # Every row up to and including this position has been dealt with and counted.
    cursor: int = -1
    created_at: datetime
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    error: Optional[str] = None
    cancel_requested: bool = False
    runner: Optional[str] = None

    @property
    def progress(self) -> float:
        return self.counts.done / self.counts.total if self.counts.total else 0.0


class EmbedBulkRequest(BaseModel):
    """A re-embedding batch. Unlike `embed_batch`, a bad text fails alone, not the batch."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # A text that cannot be embedded (blank, a lone surrogate) fails alone, in the task.
    texts: Annotated[list[Annotated[str, capped("embed_text_chars")]], Field(min_length=1), capped("bulk_texts")]
    long_text: LongTextPolicy = "fail"
    purpose: EmbedPurpose = "document"
    dimensions: EmbedDimensions = None


class EmbedBulkResult(VectorOrigin, _Timed):
    """`embeddings[i]` is None exactly when `errors[i]` says why text i got no vector."""

    # `timing` comes first (its base is last), so that Flower's shortened view of the result still shows it.
    embeddings: list[Optional[Vector]]
    errors: list[Optional[ItemError]]
    # notes[i] says how vector i was made when not from the whole text; empty when every one was.
    notes: list[Optional[VectorNote]] = []

    def metric_totals(self) -> dict[str, float]:
        return {"texts": len(self.embeddings), "item_errors": sum(e is not None for e in self.errors)}


__all__ = [
    "EmbedBulkRequest",
    "EmbedBulkResult",
    "ItemError",
    "JobCounts",
    "JobState",
    "JobStatus",
    "JsonlSource",
    "PostgresSource",
    "ReembedJobRef",
    "ReembedRequest",
]
