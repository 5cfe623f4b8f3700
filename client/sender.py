"""`TaskSender`: the client with Celery's AsyncResult in view, for tools and tests that want it."""

from __future__ import annotations

from typing import Any, Optional

from celery.result import AsyncResult
from pydantic import BaseModel

from athena_client.client import AthenaClient
from athena_client.contract.routes import TaskName


class TaskSender(AthenaClient):
    def __init__(self, broker_url: str, result_backend: str) -> None:
        super().__init__(broker_url, result_backend)

    def send(self, task: TaskName, request: BaseModel) -> AsyncResult:
        return self.app.AsyncResult(self.submit(task, request))

    def wait(self, task: TaskName, pending: AsyncResult, timeout: Optional[float] = 60.0) -> Any:
        return self.result(task, pending.id, timeout)
