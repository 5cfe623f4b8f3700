"""Sending tasks by name and reading their typed results: the one place a caller touches Celery.

`AthenaClient` builds on it; so does anything else that drives the queues
from outside a task, such as the re-embedding runner sending batches to the
bulk lane.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from celery import Celery, states
from celery.result import AsyncResult, assert_will_not_block
from pydantic import BaseModel

from athena_client.contract.errors import AthenaError, Cancelled, Expired, InvalidInput, ServerTimeout
from athena_client.contract.routes import ENQUEUED_AT_HEADER, RESULT_TYPES, ROUTES, TaskName, queue_for
from athena_client.contract.vectors import WIRE
from athena_client.result_forgetter import ResultForgetter
from athena_client.result_waiter import ResultWaiter, Ticket, WaitTimedOut
from athena_client.shared_redis.celery_options import JSON_ONLY, PUBLISH_RETRY_POLICY, RESULT_RETRIES
from athena_client.shared_redis.redis_transport import REDIS_TRANSPORT


class _KindDefault:
    def __repr__(self) -> str:
        return "the kind's default"


# `deadline` left out: the kind's own (routes.ROUTES).
KIND_DEFAULT: Any = _KindDefault()
Deadline = Union[float, datetime, None]


def expiry(task: TaskName, deadline: Deadline) -> Optional[datetime]:
    """When a worker stops starting the task: `deadline` seconds from now, that moment, or the kind's default."""
    if deadline is KIND_DEFAULT:
        deadline = ROUTES[task].deadline_s
    if deadline is None:
        return None
    now = datetime.now(timezone.utc)
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None:
            raise InvalidInput(f"the deadline of {task.value} must say its time zone; nothing was sent")
        at = deadline
    elif not isinstance(deadline, (int, float)) or isinstance(deadline, bool) or deadline != deadline:
        raise InvalidInput(f"the deadline of {task.value} is seconds from now or a datetime, not {deadline!r}; nothing was sent")
    else:
        at = now + timedelta(seconds=deadline)
    if at <= now:
        raise InvalidInput(f"the deadline of {task.value} ({at.isoformat()}) has passed already; nothing was sent")
    return at


def waited_deadline(task: TaskName, deadline: Deadline, wait: float) -> Deadline:
    """A waited-for call's deadline: the one given, else the kind's or the wait, whichever
    is sooner, since the caller has given up by then."""
    if deadline is not KIND_DEFAULT:
        return deadline
    kind = ROUTES[task].deadline_s
    return wait if kind is None else min(kind, wait)


class _WaiterCelery(Celery):
    """The client's Celery app. Its `ResultWaiter` listens for every result on one
    connection, so Celery's own result consumer must not subscribe to each sent
    task's channel as well (and unsubscribe when its AsyncResult goes): two Redis
    commands a call, and the CPU to send and parse them, for nothing."""

    def _get_backend(self):
        backend = super()._get_backend()
        backend.on_task_call = _not_subscribing
        return backend


def _not_subscribing(producer: Any, task_id: str) -> None:
    pass


class _Sent(AsyncResult):
    """What `send_task` hands back here: nothing was subscribed for it, so nothing is cancelled when it goes."""

    def __del__(self) -> None:
        pass


class TaskTransport:
    def __init__(self, app: Celery, *, timeout: float, waiter: Optional[ResultWaiter] = None) -> None:
        self.app = app
        self.timeout = timeout
        # Made on the first wait, so that a client that only submits opens no pub/sub connection.
        self._waiter = waiter
        self._waiter_made = threading.Lock()
        # Deleting a read result is not the caller's wait.
        self._forgetter = ResultForgetter(self._forget)

    @classmethod
    def connect(cls, broker_url: str, result_backend: str, *, timeout: float) -> "TaskTransport":
        app = _WaiterCelery("athena-client", broker=broker_url, backend=result_backend, set_as_current=False)
        app.conf.update(
            JSON_ONLY, **RESULT_RETRIES, broker_connection_retry_on_startup=True, task_publish_retry_policy=PUBLISH_RETRY_POLICY
        )
        if urlsplit(broker_url).scheme == "redis":
            # The workers' transport (client/shared_redis/redis_transport.py): a Redis restart handled, less per message.
            app.conf.broker_transport = REDIS_TRANSPORT
        return cls(app, timeout=timeout)

    @property
    def waiter(self) -> ResultWaiter:
        if self._waiter is None:
            with self._waiter_made:
                if self._waiter is None:
                    self._waiter = ResultWaiter.for_backend(self.app.backend)
        return self._waiter

    def submit(
        self,
        task: TaskName,
        request: Optional[BaseModel] = None,
        *,
        queue: Optional[str] = None,
        task_id: Optional[str] = None,
        deadline: Deadline = KIND_DEFAULT,
    ) -> str:
        """Enqueue and return the task id at once.

        `deadline`: seconds from now, or an aware datetime, after which no worker
        starts the task (it ends `Expired`, never reaching a server); None for
        none; by default the kind's own (`routes.ROUTES`)."""
        sent = self.app.send_task(
            task.value,
            # The fields the caller gave, not the contract's defaults, which the worker
            # fills in again: a smaller message to encode, store, decode and show in Flower.
            kwargs=request.model_dump(mode="json", exclude_defaults=True, context=WIRE) if request is not None else {},
            queue=queue or queue_for(task.value).value,
            headers={ENQUEUED_AT_HEADER: time.time()},
            task_id=task_id,
            expires=expiry(task, deadline),
            result_cls=_Sent,
        )
        return sent.id

    def result(
        self, task: TaskName, task_id: str, timeout: Optional[float] = None, *, allow_in_task: bool = False, keep: bool = False
    ) -> Any:
        """The typed result of a submitted task; waits up to `timeout` seconds.

        Once read, the result is deleted from Redis unless `keep` is set: a
        caller reads it once, and ATHENA_RESULT_EXPIRES_S is only for results
        nobody comes back for. A task's own error is its result too, read once.
        `allow_in_task` is for callers that run inside a task and wait on
        another queue's tasks by design (the jobs queue).
        """
        if not allow_in_task:
            # Celery's guard: a task waiting on a task of its own queue can deadlock the pool.
            assert_will_not_block()
        return self._read(task, task_id, self.waiter.expect(task_id), timeout, keep)

    def call(
        self, task: TaskName, request: Optional[BaseModel] = None, timeout: Optional[float] = None, *, deadline: Deadline = KIND_DEFAULT
    ) -> Any:
        """Send and wait. By default the task is not started later than the kind's
        deadline or this wait, whichever is sooner: the caller has given up by then."""
        assert_will_not_block()
        wait = self.timeout if timeout is None else timeout
        deadline = waited_deadline(task, deadline, wait)
        # Listening starts before the task is sent: its result, however fast, finds a subscriber.
        task_id = self.waiter.task_id()
        ticket = self.waiter.expect(task_id, not_sent_yet=True)
        try:
            self.submit(task, request, task_id=task_id, deadline=deadline)
        except BaseException:
            self.waiter.release(ticket)
            raise
        return self._read(task, task_id, ticket, timeout, keep=False)

    def _read(self, task: TaskName, task_id: str, ticket: Ticket, timeout: Optional[float], keep: bool) -> Any:
        wait = self.timeout if timeout is None else timeout
        try:
            meta = self.waiter.wait(ticket, wait)
        except WaitTimedOut:
            raise ServerTimeout(f"{task.value} {task_id} gave no result within {wait:.0f} s") from None
        outcome = meta.get("result")
        if meta.get("status") != states.SUCCESS:
            if isinstance(outcome, AthenaError):
                self._done_with(task_id, keep)
                raise outcome
            if meta.get("status") == states.REVOKED:
                self._done_with(task_id, keep)
                if "expired" in str(outcome):
                    raise Expired(f"{task.value} {task_id} was not started before its deadline; no worker ran it")
                raise Cancelled(f"{task.value} {task_id} was cancelled before it started; no worker ran it")
            kind = outcome.__class__.__name__ if isinstance(outcome, BaseException) else meta.get("status")
            raise AthenaError(f"{task.value} {task_id} failed: {kind}: {outcome}")
        value = RESULT_TYPES[task].model_validate(outcome)
        self._done_with(task_id, keep)
        return value

    def _done_with(self, task_id: str, keep: bool) -> None:
        if not keep:
            self._forgetter.forget(task_id)

    def _forget(self, task_ids: list[str]) -> None:
        backend = self.app.backend
        backend.client.delete(*[backend.get_key_for_task(task_id) for task_id in task_ids])

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()
        self._forgetter.close()
        self.app.close()
