"""What every inference task shares, written once: payload validation, timing,
metrics and error mapping.

A task body receives a validated request and a `TaskClock`, calls one seam and
returns its typed result; `inference_task` does the rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional, TypeVar

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError

from athena_client.errors import InvalidInput, ServerTimeout
from athena_client.payloads import ServerTiming, TaskTiming
from athena_client.routes import ENQUEUED_AT_HEADER, TASK_QUEUES, TaskName
from athena_inference.config.celery import app
from athena_inference.tasks import resources

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)


@dataclass
class TaskClock:
    task: TaskName
    enqueued_at: Optional[float]
    started_at: float
    started_perf: float

    @classmethod
    def start(cls, task: TaskName, enqueued_at: Optional[float]) -> "TaskClock":
        return cls(task, enqueued_at, time.time(), time.perf_counter())

    def finish(self, model: str, server: Optional[ServerTiming]) -> TaskTiming:
        run_ms = (time.perf_counter() - self.started_perf) * 1000
        wait_ms = None
        if self.enqueued_at is not None:
            # Publisher and worker clocks may differ by a little; never report a negative wait.
            wait_ms = max(0.0, (self.started_at - self.enqueued_at) * 1000)
        return TaskTiming(
            task=self.task.value,
            queue=TASK_QUEUES[self.task].value,
            model=model,
            enqueued_at=_utc(self.enqueued_at) if self.enqueued_at is not None else None,
            started_at=_utc(self.started_at),
            finished_at=_utc(self.started_at + run_ms / 1000),
            queue_wait_ms=wait_ms,
            run_ms=run_ms,
            server=server,
        )


def validate(model: type[RequestT], payload: dict) -> RequestT:
    """Parse a payload, or raise InvalidInput naming every bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"invalid {model.__name__}: {problems}") from None


def inference_task(
    name: TaskName, request_model: type[RequestT]
) -> Callable[[Callable[[RequestT, TaskClock], ResultT]], Task]:
    """Register `body(request, clock) -> result` as the Celery task `name`.

    Callers send keyword arguments matching `request_model`; the task returns the
    result as JSON-ready data, with its timing, and records the call's metrics.
    """

    def register(body: Callable[[RequestT, TaskClock], ResultT]) -> Task:
        @app.task(name=name.value, bind=True)
        def task(self: Task, **payload) -> dict:
            clock = TaskClock.start(name, self.request.get(ENQUEUED_AT_HEADER))
            result: Optional[BaseModel] = None
            try:
                result = body(validate(request_model, payload), clock)
                return result.model_dump(mode="json")
            except SoftTimeLimitExceeded:
                raise ServerTimeout(f"{name.value} ran past its soft time limit") from None
            finally:
                _record(name, clock, result)

        # Not functools.wraps: Celery checks call arguments against the signature it finds.
        task.__doc__ = body.__doc__
        return task

    return register


def _record(name: TaskName, clock: TaskClock, result: Optional[BaseModel]) -> None:
    # Metrics are a side channel: losing one must never fail the task.
    timing: Optional[TaskTiming] = getattr(result, "timing", None)
    try:
        if timing is None:
            resources.metrics().record(
                name.value, ok=False, latency_ms=(time.perf_counter() - clock.started_perf) * 1000
            )
        else:
            server = timing.server
            totals = result.metric_totals() if hasattr(result, "metric_totals") else {}
            resources.metrics().record(
                name.value,
                ok=True,
                latency_ms=timing.run_ms,
                tokens=server.prompt_tokens + server.generated_tokens if server else 0,
                tokens_per_second=server.tokens_per_second if server else None,
                totals=totals,
            )
    except Exception:  # noqa: BLE001 - see above
        log.warning("could not record metrics for %s", name.value, exc_info=True)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)
