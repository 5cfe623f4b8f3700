"""Task names and the queue each one runs on.

Callers send tasks by these names and never import worker code; the Celery
configuration builds its routing table from the same mapping.
"""

from enum import Enum


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


class TaskName(str, Enum):
    EMBED = "athena.embed"
    EMBED_BATCH = "athena.embed_batch"
    EMBED_BULK = "athena.embed_bulk"
    REEMBED = "athena.reembed"
    REASON = "athena.reason"
    COMPRESS_PROMPT = "athena.compress_prompt"
    COMPRESSOR_STATUS = "athena.compressor_status"
    CONSOLIDATE = "athena.consolidate"
    # The stages a consolidation job is replaced by, each on its own queue.
    CONSOLIDATE_COMPRESS = "athena.consolidate.compress"
    CONSOLIDATE_REASON = "athena.consolidate.reason"
    CONSOLIDATE_EMBED = "athena.consolidate.embed"
    # Answered by the queue's worker about its own server.
    EMBEDDINGS_HEALTH = "athena.health.embeddings"
    REASONING_HEALTH = "athena.health.reasoning"
    EMBEDDINGS_BULK_HEALTH = "athena.health.embeddings_bulk"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.EMBED: Queue.EMBEDDINGS,
    TaskName.EMBED_BATCH: Queue.EMBEDDINGS,
    TaskName.EMBED_BULK: Queue.EMBEDDINGS_BULK,
    TaskName.REEMBED: Queue.JOBS,
    TaskName.REASON: Queue.REASONING,
    TaskName.COMPRESS_PROMPT: Queue.COMPRESSION,
    TaskName.COMPRESSOR_STATUS: Queue.COMPRESSION,
    TaskName.CONSOLIDATE: Queue.CONSOLIDATION,
    TaskName.CONSOLIDATE_COMPRESS: Queue.COMPRESSION,
    TaskName.CONSOLIDATE_REASON: Queue.REASONING,
    TaskName.CONSOLIDATE_EMBED: Queue.EMBEDDINGS,
    TaskName.EMBEDDINGS_HEALTH: Queue.EMBEDDINGS,
    TaskName.REASONING_HEALTH: Queue.REASONING,
    TaskName.EMBEDDINGS_BULK_HEALTH: Queue.EMBEDDINGS_BULK,
}
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
