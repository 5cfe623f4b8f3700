"""Sending tasks by name and reading their typed results: the one place a caller touches Celery.

`AthenaClient` builds on it; so does anything else that drives the queues
from outside a task, such as the re-embedding runner sending batches to the
bulk lane.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from pydantic import BaseModel

from athena_client.consolidation import ConsolidationResult
from athena_client.errors import AthenaError, ServerTimeout
from athena_client.health import ServerHealth
from athena_client.jobs import EmbedBulkResult, JobState
from athena_client.payloads import (
    CompressionResult,
    CompressorStatus,
    EmbeddingBatchResult,
    EmbeddingResult,
    ReasoningResult,
)
from athena_client.routes import ENQUEUED_AT_HEADER, TaskName, queue_for

# Celery's defaults, minus pickle: a caller never accepts anything but JSON.
JSON_ONLY = dict(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
)

# What each task a caller may wait on returns. (Consolidation's inner stages
# hand their state on to the next stage; only the last one's answer, a
# ConsolidationResult, reaches the caller, under athena.consolidate's id.)
RESULT_TYPES: dict[TaskName, type[BaseModel]] = {
    TaskName.EMBED: EmbeddingResult,
    TaskName.EMBED_BATCH: EmbeddingBatchResult,
    TaskName.REASON: ReasoningResult,
    TaskName.COMPRESS_PROMPT: CompressionResult,
    TaskName.COMPRESSOR_STATUS: CompressorStatus,
    TaskName.CONSOLIDATE: ConsolidationResult,
    TaskName.EMBED_BULK: EmbedBulkResult,
    TaskName.REEMBED: JobState,
    TaskName.EMBEDDINGS_HEALTH: ServerHealth,
    TaskName.REASONING_HEALTH: ServerHealth,
    TaskName.EMBEDDINGS_BULK_HEALTH: ServerHealth,
}


class TaskTransport:
    def __init__(self, app: Celery, *, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    @classmethod
    def connect(cls, broker_url: str, result_backend: str, *, timeout: float) -> "TaskTransport":
        app = Celery("athena-client", broker=broker_url, backend=result_backend, set_as_current=False)
        app.conf.update(JSON_ONLY, broker_connection_retry_on_startup=True)
        return cls(app, timeout=timeout)

    def submit(self, task: TaskName, request: Optional[BaseModel] = None, *, queue: Optional[str] = None) -> str:
        """Enqueue and return the task id at once."""
        sent = self.app.send_task(
            task.value,
            kwargs=request.model_dump(mode="json") if request is not None else {},
            queue=queue or queue_for(task.value).value,
            headers={ENQUEUED_AT_HEADER: time.time()},
        )
        return sent.id

    def result(self, task: TaskName, task_id: str, timeout: Optional[float] = None, *, allow_in_task: bool = False) -> Any:
        """The typed result of a submitted task; waits up to `timeout` seconds.

        `allow_in_task` is for callers that run inside a task and wait on
        another queue's tasks by design (the jobs queue).
        """
        wait = self.timeout if timeout is None else timeout
        try:
            data = self.app.AsyncResult(task_id).get(timeout=wait, propagate=True, disable_sync_subtasks=not allow_in_task)
        except CeleryTimeout:
            raise ServerTimeout(f"{task.value} {task_id} gave no result within {wait:.0f} s") from None
        except AthenaError:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker error we have no class for
            raise AthenaError(f"{task.value} {task_id} failed: {exc.__class__.__name__}: {exc}") from None
        return RESULT_TYPES[task].model_validate(data)

    def call(self, task: TaskName, request: Optional[BaseModel] = None, timeout: Optional[float] = None) -> Any:
        return self.result(task, self.submit(task, request), timeout)

    def forget(self, task_id: str) -> None:
        self.app.AsyncResult(task_id).forget()

    def close(self) -> None:
        self.app.close()
