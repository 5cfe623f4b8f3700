"""The one policy every task runs under, written once.

A task is declared with `@app.task(name=..., base=AthenaTask)` over a body
`body(request, clock) -> result`: `request` is a pydantic model (the body's
annotation names it) and `result` a pydantic model. `AthenaTask` does the rest,
for every task:

- keyword arguments only, validated into the request model; anything else
  (positional arguments, unknown or bad fields) fails as `InvalidInput`;
- a `TaskClock` started before validation, for the result's timing;
- one metrics record per call, success or failure, and for a stage of a
  multi-task job (consolidation) the job's record when it ends;
- foreign exceptions mapped into the project's family: a soft time limit
  becomes `ServerTimeout`, a lost connection `ServerUnavailable`, anything
  else unexpected `InternalError`; Celery's own control flow (`replace`,
  `retry`) passes through untouched;
- a server that is unavailable (down, restarting, 503 while it loads) is
  waited out: the task is retried by Celery, with jittered exponential backoff,
  for as long as its kind's budget allows (`ATHENA_*_RETRY_BUDGET_S`), the
  worker process free meanwhile; bad input is never retried;
- a message whose worker died every time it ran it is failed with
  `PoisonMessage` after `ATHENA_MAX_DELIVERIES` deliveries.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import typing
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError

from athena_client.errors import AthenaError, InternalError, InvalidInput, PoisonMessage, ServerTimeout, ServerUnavailable
from athena_client.payloads import ServerTiming, TaskTiming
from athena_client.routes import ENQUEUED_AT_HEADER, TASK_QUEUES, Queue, TaskName
from athena_inference.config.servers import EMBEDDING_QUEUES
from athena_client.validation import parse
from athena_inference.config.settings import get_settings
from athena_inference.tasks import seams

log = logging.getLogger(__name__)

# Celery's control flow: a task replaced by its next stage raises Ignore, one
# that retries raises Retry. Neither is a failure.
_HANDED_OVER = (Ignore, Reject)
# When a task first tried its server, carried across its retries.
FIRST_TRY_HEADER = "athena_first_try_at"
# Queues whose tasks call no model server: nothing to wait for.
NO_SERVER_QUEUES = (Queue.COMPRESSION, Queue.JOBS)


@dataclass
class TaskClock:
    task: TaskName
    enqueued_at: Optional[float]
    started_at: float
    started_perf: float

    @classmethod
    def start(cls, task: TaskName, enqueued_at: Optional[float]) -> "TaskClock":
        return cls(task, enqueued_at, time.time(), time.perf_counter())

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started_perf) * 1000

    @property
    def queue_wait_ms(self) -> Optional[float]:
        if self.enqueued_at is None:
            return None
        # Publisher and worker clocks may differ by a little; never report a negative wait.
        return max(0.0, (self.started_at - self.enqueued_at) * 1000)

    def finish(self, model: str, server: Optional[ServerTiming]) -> TaskTiming:
        run_ms = self.elapsed_ms()
        return TaskTiming(
            task=self.task.value,
            queue=TASK_QUEUES[self.task].value,
            model=model,
            enqueued_at=_utc(self.enqueued_at) if self.enqueued_at is not None else None,
            started_at=_utc(self.started_at),
            finished_at=_utc(self.started_at + run_ms / 1000),
            queue_wait_ms=self.queue_wait_ms,
            run_ms=run_ms,
            server=server,
        )


class AthenaTask(Task):
    """Base class of every task; see the module docstring."""

    # Results are JSON-ready dicts built from pydantic models; Celery need not
    # check arguments against `run`'s signature, this class does it better.
    typing = False
    # Retries are bounded by time (the kind's retry budget), not by a count.
    max_retries = None
    # Set on a stage of a multi-task job: the metrics kind the whole job is recorded under.
    job_kind: Optional[TaskName] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Not Task.__call__: it would push a request without the message's
        # headers. Celery's tracer pushes the real one before calling this.
        name = TaskName(self.name)
        clock = TaskClock.start(name, self.request.get(ENQUEUED_AT_HEADER))
        request: Optional[BaseModel] = None
        result: Optional[BaseModel] = None
        outcome = "failure"
        counted = False
        try:
            counted = self._count_delivery()
            if args:
                raise InvalidInput(
                    f"{self.name} takes keyword arguments only (the fields of {self.request_model.__name__}); "
                    f"it was sent {len(args)} positional argument(s)"
                )
            request = parse(self.request_model, kwargs, limits=get_settings().payload_limits)
            result = self.run(request, clock)
            outcome = "success"
            return result.model_dump(mode="json")
        except _HANDED_OVER:
            outcome = "handed over"
            raise
        except Retry:
            # Counted when the last attempt ends, not at each attempt.
            outcome = "retrying"
            raise
        except ServerUnavailable as exc:
            final = self._retry_later(exc, clock)
            outcome = "retrying" if isinstance(final, Retry) else "failure"
            raise final from None
        except AthenaError:
            raise
        except SoftTimeLimitExceeded:
            raise ServerTimeout(f"{self.name} ran past its soft time limit ({self.soft_time_limit} s)") from None
        except Exception as exc:  # noqa: BLE001 - the one place foreign errors become ours
            raise map_foreign_error(self.name, exc) from None
        finally:
            if outcome != "retrying":
                done = (clock, request, result, outcome, counted)
                ending = sys.exc_info()[1]
                if outcome in ("success", "failure") and self._traced() and (ending is None or isinstance(ending, Exception)):
                    # Once the result is stored (after_return): the caller never waits on bookkeeping.
                    self.request.athena_done = done
                else:
                    self._done(*done)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        done = getattr(self.request, "athena_done", None)
        if done is not None:
            self.request.athena_done = None
            self._done(*done)

    def _traced(self) -> bool:
        """Run by Celery's tracer, which calls after_return once the result is stored."""
        return self.request.id is not None and not self.request.called_directly

    def _done(self, clock: TaskClock, request: Optional[BaseModel], result: Optional[BaseModel], outcome: str, counted: bool) -> None:
        if counted:
            self._forget_delivery()
        self._record(clock, request, result, outcome)

    # --- a server down: retried by the task, under a budget ---

    def _retry_later(self, exc: ServerUnavailable, clock: TaskClock) -> BaseException:
        """Celery's Retry, to try again once the server may be back; or, past the
        task's budget, the error that says which server and for how long."""
        settings = get_settings()
        queue = TASK_QUEUES[TaskName(self.name)]
        budget = settings.embed_retry_budget_s if queue in EMBEDDING_QUEUES else settings.reason_retry_budget_s
        if queue in NO_SERVER_QUEUES:
            budget = 0.0
        first = float(self.request.get(FIRST_TRY_HEADER) or clock.started_at)
        tried_s = time.time() - first
        retries = self.request.retries or 0
        delay = max(exc.retry_after or 0.0, random.uniform(0, min(settings.task_retry_backoff_max_s, settings.task_retry_backoff_s * 2**retries)))
        if self.request.id is None or tried_s + delay > budget:
            return ServerUnavailable(
                f"{exc} — gave up after {tried_s:.0f} s and {retries + 1} tries of this task "
                f"(its budget: {budget:g} s, ATHENA_{'EMBED' if queue in EMBEDDING_QUEUES else 'REASON'}_RETRY_BUDGET_S)"
            )
        log.warning("%s: %s; retrying in %.1f s (tried for %.0f s)", self.name, exc, delay, tried_s)
        try:
            return self.retry(countdown=delay, max_retries=None, headers={FIRST_TRY_HEADER: first})
        except Retry as retry:
            return retry

    # --- poison messages ---

    def _count_delivery(self) -> bool:
        """Refuse a message whose worker died every time it ran it, instead of
        running it once more. True when this delivery was counted in Redis (a redelivery)."""
        if self.request.id is None or self.request.called_directly:
            return False
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        deliveries = seams.deliveries().delivered(self.request.id, self.request.retries or 0, redelivered=redelivered)
        limit = get_settings().max_deliveries
        if deliveries > limit:
            raise PoisonMessage(
                f"{self.name} {self.request.id} was delivered {deliveries} times and its worker died each time it "
                f"ran (out of memory, a crash); it is not run again (ATHENA_MAX_DELIVERIES={limit})"
            )
        return redelivered

    def _forget_delivery(self) -> None:
        if self.request.id is not None and not self.request.called_directly:
            try:
                seams.deliveries().done(self.request.id, self.request.retries or 0)
            except Exception:  # noqa: BLE001 - bookkeeping; the key expires anyway
                log.warning("could not clear the delivery count of %s", self.request.id, exc_info=True)

    @property
    def request_model(self) -> type[BaseModel]:
        """The pydantic model the body's first non-self parameter is annotated with."""
        cached = self.__dict__.get("_request_model")
        if cached is None:
            hints = typing.get_type_hints(self.run)
            models = [hint for key, hint in hints.items() if key != "return" and _is_model(hint)]
            if not models:
                raise TypeError(f"{self.name}: the task body must annotate its request with a pydantic model")
            cached = self.__dict__["_request_model"] = models[0]
        return cached

    # --- metrics: a side channel, so losing one never fails the task ---

    def _record(self, clock: TaskClock, request: Optional[BaseModel], result: Optional[BaseModel], outcome: str) -> None:
        try:
            store = seams.metrics()
            # A job's entry task is counted once, as the job (below).
            if self.job_kind is None or self.job_kind.value != self.name:
                store.record(self.name, **_sample(outcome != "failure", clock.elapsed_ms(), result))
            if self.job_kind is not None and outcome != "handed over":
                # A stage carries the job's start; for the entry task, its own start is the job's.
                started = getattr(request, "started_at", None) or clock.started_at
                job_ms = (time.time() - started) * 1000
                store.record(self.job_kind.value, ok=outcome == "success", latency_ms=job_ms)
        except Exception:  # noqa: BLE001 - see above
            log.warning("could not record metrics for %s", self.name, exc_info=True)


def map_foreign_error(task: str, exc: Exception) -> AthenaError:
    """An exception from outside the project's family, as the family member that says what happened."""
    import redis

    what = f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, ValidationError):
        return InternalError(f"{task} built an invalid result ({what})")
    if isinstance(exc, (redis.ConnectionError, ConnectionError)):
        return ServerUnavailable(f"{task} lost a connection ({what})")
    if isinstance(exc, (redis.TimeoutError, TimeoutError)):
        return ServerTimeout(f"{task} timed out ({what})")
    return InternalError(f"{task} failed unexpectedly ({what})")


def _sample(ok: bool, latency_ms: float, result: Optional[BaseModel]) -> dict[str, Any]:
    """A call's metrics: latency always; tokens, the result's own sums and samples when it succeeded."""
    if not ok or result is None:
        return {"ok": ok, "latency_ms": latency_ms}
    timing = getattr(result, "timing", None)
    server = timing.server if isinstance(timing, TaskTiming) else None
    return {
        "ok": True,
        "latency_ms": latency_ms,
        "prompt_tokens": server.prompt_tokens if server else 0,
        "output_tokens": server.generated_tokens if server else 0,
        "tokens_per_second": server.tokens_per_second if server else None,
        "totals": result.metric_totals() if hasattr(result, "metric_totals") else {},
        "samples": result.metric_samples() if hasattr(result, "metric_samples") else {},
    }


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)
