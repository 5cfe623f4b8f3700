"""The one policy every task runs under, written once.

A task is declared with `@app.task(name=..., base=AthenaTask)` over a body
`body(request) -> result` (`body(self, request)` with `bind=True`): `request`
is a pydantic model (the body's annotation names it) and `result` a pydantic
model. The body does its work; `AthenaTask` owns the call:

- keyword arguments only, validated into the request model under the payload
  limits; anything else (positional arguments, unknown or bad fields) fails as
  `InvalidInput`;
- the call's clock, started before validation. A body fills its result's
  `timing` with `task_timing(model, server)`, giving only what it alone knows
  (the model that answered, what the server reported); the clock gives the
  task, queue and times. A body that times itself otherwise (a consolidation
  stage) reads `running_clock()`;
- one `Outcome` per call, and one metrics record per call, success or failure,
  written once Celery has stored the result (`after_return`), so a caller never
  waits on bookkeeping; a stage of a multi-task job (consolidation) also
  records the job when it ends. The store is any `MetricsSink`;
- foreign exceptions mapped once into the project's family
  (`map_foreign_error`): a soft time limit becomes `ServerTimeout`, a lost
  connection `ServerUnavailable`, anything else unexpected `InternalError`;
  Celery's own control flow (`Retry`, and `Ignore`/`Reject` from `replace`)
  passes through untouched;
- a server that is unavailable is waited out (below); bad input is never retried;
- a message whose worker died every time it ran it is failed with
  `PoisonMessage` after `ATHENA_MAX_DELIVERIES` deliveries.

Who retries what
----------------
Each layer retries one kind of trouble, and none retries another's:

    LlamaServer (workers/llama_server.py)   a blip inside one HTTP call: a refused or
        reset connection, a connect timeout, 503 while the model loads. ATHENA_RETRY_ATTEMPTS
        (2) tries, ATHENA_RETRY_BACKOFF_S apart, so under a second. It stays because the
        breaker counts what it raises: without it, one stale keep-alive connection would
        open the breaker of every worker process for a cooldown and send tasks through the
        broker's backoff for a fault gone half a second later.
    CircuitBreaker (workers/circuit_breaker.py)   retries nothing: once a server failed,
        it refuses every process's calls at once for a cooldown and says when to come back
        (`ServerUnavailable.retry_after`), which this layer waits at least.
    ServerPool (workers/server_pool.py)   retries nothing either: a call that one copy of
        the bulk lane's server refuses goes to the next copy, once each, without waiting.
    AthenaTask (here)   the task, once the seam gave up with `ServerUnavailable` and only
        then: retried through Celery (`self.retry`) with full-jitter exponential backoff
        (ATHENA_TASK_RETRY_BACKOFF_S, capped at ATHENA_TASK_RETRY_BACKOFF_MAX_S), the worker
        process free meanwhile, until the lane's budget from the first try is spent
        (`config/registry.py`: `lane_of(task).retry_budget_s(settings)`, e.g.
        ATHENA_EMBED_RETRY_BUDGET_S; none for lanes that call no model server). The first
        try's time travels in the `athena_first_try_at` header. Celery's `autoretry_for`
        is not used: its budget is a count, not seconds from the first try, and its backoff
        knows nothing of the breaker's `retry_after`.
    the broker (acks_late, reject_on_worker_lost)   a task whose worker died is delivered
        again, up to ATHENA_MAX_DELIVERIES (counted here, `_count_delivery`).

A read timeout, a server error and bad input are retried by no layer: the
server got the request (retrying would double its load), or it can only fail
again. The re-embedding runner's resending of a failed batch is a job's
decision about one batch of many, above all of these.
"""

from __future__ import annotations

import logging
import random
import time
import typing
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TaskPredicate
from celery.signals import task_revoked
from celery.worker.request import Request
from pydantic import BaseModel, ValidationError

from athena_client.contract.errors import (
    AthenaError,
    Cancelled,
    InternalError,
    InvalidInput,
    PoisonMessage,
    ServerTimeout,
    ServerUnavailable,
)
from athena_client.contract.payloads import ServerTiming, TaskTiming
from athena_client.contract.routes import ENQUEUED_AT_HEADER, TASK_QUEUES, TaskName
from athena_client.contract.validation import parse
from athena_client.contract.vectors import WIRE
from athena_inference.config.registry import LANES, Lane, lane_of
from athena_inference.config.settings import env_name, get_settings
from athena_inference.tasks import seams
from athena_inference.workers.metrics import AddsSamples, AddsTotals, MetricsSink

log = logging.getLogger(__name__)

# When a task first tried its server, carried across its retries.
FIRST_TRY_HEADER = "athena_first_try_at"


class Outcome(str, Enum):
    """How one call of a task ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    # Celery runs it again later: recorded when its last try ends, not at each try.
    RETRYING = "retrying"
    # Replaced by its job's next stage (Celery's Ignore, or Reject): the job goes on under its id.
    HANDED_OVER = "handed over"


@dataclass
class TaskClock:
    task: TaskName
    enqueued_at: Optional[float]
    started_at: float
    started_perf: float
    # The call's Celery task id; None when called as a function.
    task_id: Optional[str] = None

    @classmethod
    def start(cls, task: TaskName, enqueued_at: Optional[float], task_id: Optional[str] = None) -> "TaskClock":
        return cls(task, enqueued_at, time.time(), time.perf_counter(), task_id)

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


# The clock of the call running in this thread: a threaded worker runs many at once.
_running: ContextVar[TaskClock] = ContextVar("athena_running_clock")


def running_clock() -> TaskClock:
    """The clock of the task call running here (its start, queue wait, time so far)."""
    try:
        return _running.get()
    except LookupError:
        raise RuntimeError("no task is running here: running_clock() and task_timing() serve a body that AthenaTask runs") from None


def task_timing(model: str, server: Optional[ServerTiming] = None) -> TaskTiming:
    """The running call's `TaskTiming`, stamped now. The body says what only it
    knows (the model that answered, what its server reported; None for work done
    in the worker), the call's clock the rest."""
    return running_clock().finish(model, server)


# Tasks whose lane sends no task-started event (config/registry.py: Lane.started_events).
_QUIET_START = frozenset(task.value for lane in LANES if not lane.started_events for task in lane.tasks)


class AthenaRequest(Request):
    """A worker's request for one of our tasks: Celery's, less the events its lane does without."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-started" and self.name in _QUIET_START:
            return
        super().send_event(type, **fields)


@dataclass
class _Call:
    """One call of a task, as the base follows it from its start to its bookkeeping."""

    clock: TaskClock
    request: Optional[BaseModel] = None
    result: Optional[BaseModel] = None
    outcome: Outcome = Outcome.FAILURE
    # What left the call: None on success.
    raised: Optional[BaseException] = None
    # This delivery was counted in Redis (a redelivery), to be cleared once the call ends.
    counted: bool = False


class AthenaTask(Task):
    """Base class of every task; see the module docstring."""

    # Results are JSON-ready dicts built from pydantic models; Celery need not
    # check arguments against `run`'s signature, this class does it better.
    typing = False
    # Retries are bounded by time (the lane's retry budget), not by a count.
    max_retries = None
    # Set on a stage of a multi-task job: the metrics kind the whole job is recorded under.
    job_kind: Optional[TaskName] = None
    Request = AthenaRequest
    # The result's repr in the task-succeeded event (Flower's "Result" column; Celery's
    # default is 1024 characters): the timing, which the stored result carries first
    # (`stored_form`), not 1 KB of a vector made, encoded, stored and decoded by the
    # worker, Redis and Flower for every task.
    resultrepr_maxsize = 200

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Not Task.__call__: it would push a request without the message's
        # headers. Celery's tracer pushes the real one before calling this.
        traced = self._traced()
        call = _Call(TaskClock.start(TaskName(self.name), self.request.get(ENQUEUED_AT_HEADER), self.request.id if traced else None))
        running = _running.set(call.clock)
        try:
            call.counted = self._count_delivery()
            if traced:
                self._refuse_if_cancelled()
            call.request = self._validate(args, kwargs)
            call.result = self.run(call.request)
            call.outcome = Outcome.SUCCESS
            return stored_form(call.result)
        except BaseException as exc:
            call.outcome, call.raised = self._settle(exc, call.clock)
            if call.raised is exc:
                raise
            raise call.raised from None
        finally:
            _running.reset(running)
            self._end(call)

    def _validate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseModel:
        if args:
            raise InvalidInput(
                f"{self.name} takes keyword arguments only (the fields of {self.request_model.__name__}); "
                f"it was sent {len(args)} positional argument(s)"
            )
        return parse(self.request_model, kwargs, limits=get_settings().payload_limits)

    def _settle(self, exc: BaseException, clock: TaskClock) -> tuple[Outcome, BaseException]:
        """How the call ended, and the exception that leaves it: the one place exceptions are judged."""
        if isinstance(exc, (Ignore, Reject)):
            return Outcome.HANDED_OVER, exc
        if isinstance(exc, Retry):
            return Outcome.RETRYING, exc
        if isinstance(exc, ServerUnavailable):
            later = self._retry_later(exc, clock)
            return (Outcome.RETRYING if isinstance(later, Retry) else Outcome.FAILURE), later
        if isinstance(exc, AthenaError) or not isinstance(exc, Exception):
            return Outcome.FAILURE, exc
        return Outcome.FAILURE, map_foreign_error(self.name, exc, soft_time_limit=self.soft_time_limit)

    # --- bookkeeping: after the result is stored, when Celery stores one ---

    def _end(self, call: _Call) -> None:
        if call.outcome is Outcome.RETRYING:
            return  # its last try is the one recorded
        if self._traced() and _stored_before_after_return(call.raised):
            # Once the result is stored (after_return): the caller never waits on bookkeeping.
            self.request.athena_call = call
        else:
            self._book(call)

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        call = getattr(self.request, "athena_call", None)
        if call is not None:
            self.request.athena_call = None
            self._book(call)

    def _book(self, call: _Call) -> None:
        if call.counted:
            self._forget_delivery()
        self._record(call)

    def _traced(self) -> bool:
        """Run by Celery's tracer, which calls after_return once the result is stored."""
        return self.request.id is not None and not self.request.called_directly

    # --- a server down: retried by the task, under its lane's budget ---

    def _retry_later(self, exc: ServerUnavailable, clock: TaskClock) -> BaseException:
        """Celery's Retry, to try again once the server may be back; or, past the
        lane's budget, the error that says which server, for how long, and which setting."""
        settings = get_settings()
        lane = lane_of(TaskName(self.name))
        budget = lane.retry_budget_s(settings)
        first = float(self.request.get(FIRST_TRY_HEADER) or clock.started_at)
        tried_s = time.time() - first
        retries = self.request.retries or 0
        # Full jitter, so processes that failed together come back apart; never before the breaker lets them.
        backoff = min(settings.task_retry_backoff_max_s, settings.task_retry_backoff_s * 2**retries)
        delay = max(exc.retry_after or 0.0, random.uniform(0, backoff))
        if self.request.id is None or tried_s + delay > budget:
            return ServerUnavailable(
                f"{exc} — gave up after {tried_s:.0f} s and {retries + 1} tries of this task ({_budget_note(lane, budget)})"
            )
        log.warning("%s: %s; retrying in %.1f s (tried for %.0f s)", self.name, exc, delay, tried_s)
        try:
            return self.retry(countdown=delay, max_retries=None, headers={FIRST_TRY_HEADER: first})
        except (Retry, Reject) as control:
            # Reject: the retry could not be published, and Celery drops the message.
            return control

    # --- cancelled while it waited ---

    def _refuse_if_cancelled(self) -> None:
        """A task cancelled while it waited, where Celery's revoke did not reach
        (no worker was up, or this one restarted since): it does not run."""
        if seams.cancel_requests().requested(self.request.id):
            raise Cancelled(f"{self.name} {self.request.id} was cancelled before it started; it did not run")

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
        """The pydantic model the body's request parameter is annotated with."""
        cached = self.__dict__.get("_request_model")
        if cached is None:
            hints = typing.get_type_hints(self.run)
            models = [hint for key, hint in hints.items() if key != "return" and _is_model(hint)]
            if not models:
                raise TypeError(f"{self.name}: the task body must annotate its request with a pydantic model")
            cached = self.__dict__["_request_model"] = models[0]
        return cached

    # --- metrics: a side channel, so losing one never fails the task ---

    def _record(self, call: _Call) -> None:
        try:
            sink: MetricsSink = seams.metrics()
            # A job's entry task is counted once, as the job (below).
            if self.job_kind is None or self.job_kind.value != self.name:
                sink.record(self.name, **_figures(call))
            if self.job_kind is not None and call.outcome is not Outcome.HANDED_OVER:
                # A stage carries the job's start; for the entry task, its own start is the job's.
                started = getattr(call.request, "started_at", None) or call.clock.started_at
                sink.record(self.job_kind.value, ok=call.outcome is Outcome.SUCCESS, latency_ms=(time.time() - started) * 1000)
        except Exception:  # noqa: BLE001 - see above
            log.warning("could not record metrics for %s", self.name, exc_info=True)


# What an operator reads first in Flower's result column, which is cut at `resultrepr_maxsize`.
_TIMING_FIRST = ("queue_wait_ms", "run_ms", "server")


def stored_form(result: BaseModel) -> dict[str, Any]:
    """The result as Celery stores it and Flower shows it: JSON-ready, its vectors in
    the wire's compact form (client/contract/vectors.py), with the timing first and the
    durations first within it. Flower's result column is the
    start of this dict's repr, and that start should be the queue wait, run time and
    server figures, not the first numbers of a vector. (The client reads the fields
    by name, so their order is for the reader alone.)"""
    dumped = result.model_dump(mode="json", context=WIRE)
    timing = dumped.get("timing")
    if timing is None:
        return dumped
    dumped["timing"] = {key: timing[key] for key in _TIMING_FIRST if key in timing} | timing
    return {"timing": dumped["timing"]} | dumped


def map_foreign_error(task: str, exc: Exception, *, soft_time_limit: Optional[float] = None) -> AthenaError:
    """An exception from outside the project's family, as the family member that says what happened."""
    what = f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, SoftTimeLimitExceeded):
        return ServerTimeout(f"{task} ran past its soft time limit ({soft_time_limit} s)")
    if isinstance(exc, ValidationError):
        return InternalError(f"{task} built an invalid result ({what})")
    if isinstance(exc, (redis.ConnectionError, ConnectionError)):
        return ServerUnavailable(f"{task} lost a connection ({what})")
    if isinstance(exc, (redis.TimeoutError, TimeoutError)):
        return ServerTimeout(f"{task} timed out ({what})")
    return InternalError(f"{task} failed unexpectedly ({what})")


def _stored_before_after_return(raised: Optional[BaseException]) -> bool:
    """Whether Celery's tracer stores a result and then calls after_return: on
    success and on a failure, not when the task retries, is replaced or rejected
    (Celery's TaskPredicate), nor when a BaseException leaves it."""
    return raised is None or (isinstance(raised, Exception) and not isinstance(raised, TaskPredicate))


def _budget_note(lane: Lane, budget: float) -> str:
    if lane.retry_budget is None:
        return f"no retry budget: the {lane.queue.value} queue calls no model server to wait for"
    return f"its budget: {budget:g} s, {env_name(lane.retry_budget)}"


def _figures(call: _Call) -> dict[str, Any]:
    """A call's metrics: latency always; tokens, the result's own sums and samples when it succeeded."""
    ok = call.outcome is not Outcome.FAILURE
    latency_ms = call.clock.elapsed_ms()
    result = call.result
    if not ok or result is None:
        return {"ok": ok, "latency_ms": latency_ms, "cancelled": isinstance(call.raised, Cancelled)}
    timing = getattr(result, "timing", None)
    server = timing.server if isinstance(timing, TaskTiming) else None
    return {
        "ok": True,
        "latency_ms": latency_ms,
        "prompt_tokens": server.prompt_tokens if server else 0,
        "output_tokens": server.generated_tokens if server else 0,
        "tokens_per_second": server.tokens_per_second if server else None,
        "totals": result.metric_totals() if isinstance(result, AddsTotals) else {},
        "samples": result.metric_samples() if isinstance(result, AddsSamples) else {},
    }


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


@task_revoked.connect
def _count_revoked(sender: Any = None, expired: bool = False, **_: Any) -> None:
    """A task Celery dropped unrun: its deadline (`expires`) passed before a
    worker started it (stored REVOKED "expired"; the client raises `Expired`),
    or a caller cancelled it while it waited (`Cancelled`). Counted among its
    kind's failures, as expired or cancelled."""
    if not isinstance(sender, AthenaTask):
        return
    try:
        sink: MetricsSink = seams.metrics()
        sink.record(sender.name, ok=False, latency_ms=0.0, expired=expired, cancelled=not expired)
    except Exception:  # noqa: BLE001 - a side channel, as above
        log.warning("could not record a revoked %s", sender.name, exc_info=True)
