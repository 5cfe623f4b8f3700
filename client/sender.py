"""Send tasks by name and read their typed results, without importing worker code."""

from __future__ import annotations

import time
from typing import Optional

from celery import Celery
from celery.result import AsyncResult
from pydantic import BaseModel

from athena_client.payloads import CompressionResult, EmbeddingBatchResult, EmbeddingResult, ReasoningResult
from athena_client.routes import ENQUEUED_AT_HEADER, TaskName, queue_for

RESULT_TYPES: dict[TaskName, type[BaseModel]] = {
    TaskName.EMBED: EmbeddingResult,
    TaskName.EMBED_BATCH: EmbeddingBatchResult,
    TaskName.REASON: ReasoningResult,
    TaskName.COMPRESS_PROMPT: CompressionResult,
}


class TaskSender:
    def __init__(self, broker_url: str, result_backend: str) -> None:
        self.app = Celery("athena-client", broker=broker_url, backend=result_backend, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            broker_connection_retry_on_startup=True,
        )

    def send(self, task: TaskName, request: BaseModel) -> AsyncResult:
        return self.app.send_task(
            task.value,
            kwargs=request.model_dump(mode="json"),
            queue=queue_for(task.value).value,
            headers={ENQUEUED_AT_HEADER: time.time()},
        )

    def wait(self, task: TaskName, pending: AsyncResult, timeout: Optional[float] = 60.0) -> BaseModel:
        """The typed result; a failed task raises its AthenaError subclass."""
        data = pending.get(timeout=timeout, propagate=True)
        return RESULT_TYPES[task].model_validate(data)

    def call(self, task: TaskName, request: BaseModel, timeout: Optional[float] = 60.0) -> BaseModel:
        return self.wait(task, self.send(task, request), timeout)

    def close(self) -> None:
        self.app.close()
