"""Task names, the queue each one runs on, and what it returns.

Callers send tasks by these names and never import worker code; the Celery
configuration builds its routing table from the same table, and the client
validates each result with its type.
"""

from enum import Enum
from typing import NamedTuple, Optional

from pydantic import BaseModel

from athena_client.contract.consolidation import ConsolidationResult
from athena_client.contract.health import ServerHealth
from athena_client.contract.jobs import EmbedBulkResult, JobState
from athena_client.contract.payloads import (
    CompressionResult,
    CompressorStatus,
    EmbeddingBatchResult,
    EmbeddingResult,
    ReasoningResult,
    RerankResult,
)


class Queue(str, Enum):
    EMBEDDINGS = "embeddings"
    REASONING = "reasoning"
    COMPRESSION = "compression"
    CONSOLIDATION = "consolidation"
    # Re-embedding batches, on a second embedding server, so bulk work never
    # queues in front of an interactive embed (docs/reembedding.md).
    EMBEDDINGS_BULK = "embeddings_bulk"
    # Long-running jobs (a whole store's re-embedding) that drive the other queues.
    JOBS = "jobs"
    # Documents ordered by their relevance to a query, on a server of its own.
    RERANK = "rerank"
    # Generations nobody is waiting on interactively (consolidation's reasoning
    # stage), with a worker of their own on the reasoning server's slots: an
    # interactive `reason` never queues behind them, and waits at most for the
    # one generation of theirs in progress.
    REASONING_BACKGROUND = "reasoning_background"


class TaskName(str, Enum):
    EMBED = "athena.embed"
    EMBED_BATCH = "athena.embed_batch"
    EMBED_BULK = "athena.embed_bulk"
    REEMBED = "athena.reembed"
    REASON = "athena.reason"
    COMPRESS_PROMPT = "athena.compress_prompt"
    COMPRESSOR_STATUS = "athena.compressor_status"
    RERANK = "athena.rerank"
    CONSOLIDATE = "athena.consolidate"
    # The stages a consolidation job is replaced by, each on its own queue.
    CONSOLIDATE_COMPRESS = "athena.consolidate.compress"
    CONSOLIDATE_REASON = "athena.consolidate.reason"
    CONSOLIDATE_EMBED = "athena.consolidate.embed"
    # Answered by the queue's worker about its own server.
    EMBEDDINGS_HEALTH = "athena.health.embeddings"
    REASONING_HEALTH = "athena.health.reasoning"
    EMBEDDINGS_BULK_HEALTH = "athena.health.embeddings_bulk"
    RERANK_HEALTH = "athena.health.rerank"


class Route(NamedTuple):
    queue: Queue
    # What a caller waiting on the task gets back; None for a task whose result
    # no caller reads (consolidation's stages hand their state to the next one).
    result: Optional[type[BaseModel]]
    # How long after it is sent the task is still worth starting, unless the
    # caller says otherwise: past it, a worker drops it (Expired) without
    # running it, so a backlog of calls nobody waits for any more never reaches
    # a server. None: no deadline (work sent by the workers themselves, jobs).
    deadline_s: Optional[float] = None


# Every task: the queue it runs on and what it returns.
ROUTES: dict[TaskName, Route] = {
    TaskName.EMBED: Route(Queue.EMBEDDINGS, EmbeddingResult, 30),
    TaskName.EMBED_BATCH: Route(Queue.EMBEDDINGS, EmbeddingBatchResult, 60),
    # The job's runner resends a batch that took too long (ATHENA_JOB_BATCH_TIMEOUT_S).
    TaskName.EMBED_BULK: Route(Queue.EMBEDDINGS_BULK, EmbedBulkResult),
    # A job may wait behind another job for hours; its record in Redis says where it is.
    TaskName.REEMBED: Route(Queue.JOBS, JobState),
    TaskName.REASON: Route(Queue.REASONING, ReasoningResult, 900),
    TaskName.COMPRESS_PROMPT: Route(Queue.COMPRESSION, CompressionResult, 300),
    TaskName.COMPRESSOR_STATUS: Route(Queue.COMPRESSION, CompressorStatus, 30),
    TaskName.RERANK: Route(Queue.RERANK, RerankResult, 30),
    # The last stage's answer reaches the caller under athena.consolidate's id;
    # the deadline is the job's start, and its stages, once started, run.
    TaskName.CONSOLIDATE: Route(Queue.CONSOLIDATION, ConsolidationResult, 3600),
    TaskName.CONSOLIDATE_COMPRESS: Route(Queue.COMPRESSION, None),
    TaskName.CONSOLIDATE_REASON: Route(Queue.REASONING_BACKGROUND, None),
    TaskName.CONSOLIDATE_EMBED: Route(Queue.EMBEDDINGS, None),
    TaskName.EMBEDDINGS_HEALTH: Route(Queue.EMBEDDINGS, ServerHealth, 30),
    TaskName.REASONING_HEALTH: Route(Queue.REASONING, ServerHealth, 30),
    TaskName.EMBEDDINGS_BULK_HEALTH: Route(Queue.EMBEDDINGS_BULK, ServerHealth, 30),
    TaskName.RERANK_HEALTH: Route(Queue.RERANK, ServerHealth, 30),
}
TASK_QUEUES: dict[TaskName, Queue] = {task: route.queue for task, route in ROUTES.items()}
RESULT_TYPES: dict[TaskName, type[BaseModel]] = {task: route.result for task, route in ROUTES.items() if route.result}
# The queues whose worker fronts a server, each with the task that looks at it:
# `athena.health.<queue>`, answered on that queue.
HEALTH_TASK_PREFIX = "athena.health."
SERVER_HEALTH = {TASK_QUEUES[task]: task for task in TaskName if task.value.startswith(HEALTH_TASK_PREFIX)}

# Set by the publisher (see config.celery) so the worker can report queue wait.
ENQUEUED_AT_HEADER = "athena_enqueued_at"


def queue_for(task_name: str) -> Queue:
    """The queue a task runs on; unknown names are a caller's mistake, not a default."""
    try:
        return TASK_QUEUES[TaskName(task_name)]
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        raise KeyError(f"unknown task {task_name!r}; known tasks: {known}") from None
