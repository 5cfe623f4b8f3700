"""Re-embedding jobs: what to re-embed, and how far a job has got.

A job reads a memory store, sends token-sized batches to the bulk embedding
lane, and writes each vector back with the model id and the hash of the text
it was computed from. Its state lives in Redis next to the task results, so
the CLI, Athena and Flower all see the same counts.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from athena_client.payloads import TaskTiming

# A SQL identifier we are willing to quote into DDL: plain lower-case names only.
SqlName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
MAX_BULK_TEXTS = 1024


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JsonlSource(_Spec):
    """A JSONL file of memories, one object per line, re-embedded into `output`.

    `output` ending in `.npy` gets a float32 matrix plus `<output>.ids.jsonl`
    (one `{"id", "model", "content_sha256"}` per matrix row); anything else gets
    JSONL lines `{"id", "model", "content_sha256", "embedding"}`. Work done so far
    is kept in `<output>.state.sqlite`, which lets a re-run skip unchanged texts.
    """

    kind: Literal["jsonl"] = "jsonl"
    path: str
    output: str
    id_field: str = "id"
    text_field: str = "content"

    @model_validator(mode="after")
    def _distinct_paths(self) -> "JsonlSource":
        if self.path == self.output:
            raise ValueError("output must differ from path: the source is read while the output is written")
        return self


class PostgresSource(_Spec):
    """A table shaped like Athena's `memory_vectors` (`id BIGSERIAL`, `content TEXT`, `embedding`).

    With `target_column` unset, vectors are written in place into
    `embedding_column`; naming a new column re-embeds into it (a model
    migration), created as `vector(n)` with pgvector or `real[]` without. Two
    bookkeeping columns, `<target>_model` and `<target>_content_sha256`, are
    added next to it.
    """

    kind: Literal["postgres"] = "postgres"
    dsn: str
    table: SqlName = "memory_vectors"
    id_column: SqlName = "id"
    content_column: SqlName = "content"
    embedding_column: SqlName = "embedding"
    target_column: Optional[SqlName] = None

    @property
    def column(self) -> str:
        return self.target_column or self.embedding_column


StoreSpec = Annotated[Union[JsonlSource, PostgresSource], Field(discriminator="kind")]


class ReembedRequest(_Spec):
    source: StoreSpec
    # Refuse to write if the lane serves another model than this (e.g. after a swap).
    expected_model: Optional[str] = None
    # A batch closes at this many (estimated) tokens or texts, whichever comes first.
    batch_tokens: int = Field(4096, ge=64, le=1_000_000)
    batch_texts: int = Field(256, ge=1, le=MAX_BULK_TEXTS)
    # Batches in flight at once; also the most the bulk queue may hold before the runner waits.
    window: int = Field(4, ge=1, le=64)


class ReembedJobRef(BaseModel):
    """The `athena.reembed` task's payload: the job is created in Redis first, with its request."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    job_id: str


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

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.skipped


class JobState(BaseModel):
    job_id: str
    status: JobStatus
    request: ReembedRequest
    counts: JobCounts = JobCounts()
    model: Optional[str] = None
    dimension: Optional[int] = None
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
    texts: list[str] = Field(min_length=1, max_length=MAX_BULK_TEXTS)


class EmbedBulkResult(BaseModel):
    """`embeddings[i]` is None exactly when `errors[i]` says why text i got no vector."""

    # First, so that Flower's shortened view of the result still shows it.
    timing: TaskTiming
    embeddings: list[Optional[list[float]]]
    errors: list[Optional[ItemError]]
    dimension: int
    model: str

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
