"""Cancelling a task by its id: where it is, then a cancel that every worker sees.

A cancel is written twice: as Celery's revoke, which the workers up now hold
in memory and which drops the task on arrival (Flower shows it REVOKED), and as
a key in the result backend's Redis (client/shared_redis/cancel_requests.py),
which a worker reads before it starts any task and, every 20 ms, for the
generation it is running: that generation's HTTP request is closed and the
server frees its slot.

Before that, the task is looked for, so that a cancel says what it found and
an id nobody knows is an error rather than silence: its stored state (a result,
or STARTED), the workers' unacknowledged messages (late acks: a task a worker
has taken is there until it ends), then its queue's list. Only a Redis broker
can be searched; with another, a task without a stored state is taken to be
queued.
"""

from __future__ import annotations

import time
from typing import Literal, Optional

from celery import Celery, states
from pydantic import BaseModel

from athena_client.contract.errors import InvalidInput, UnknownTask
from athena_client.contract.routes import Queue
from athena_client.shared_redis.cancel_requests import CancelRequests

State = Literal["queued", "running", "finished"]
# A message moves from its queue to the unacknowledged set in two steps; a look
# between them finds it in neither, so one that finds nothing looks again.
LOOKS = 4
LOOK_PAUSE_S = 0.05
# Queue entries read at once while searching a backlog.
SCAN_CHUNK = 1000


class CancelReport(BaseModel):
    """What a cancel found: "queued" (it will not run), "running" (a generation is
    stopped at the server; other work, short, ends on its own), or "finished"
    (too late: its result stands)."""

    task_id: str
    state: State
    detail: str


class Canceller:
    def __init__(self, app: Celery, requests: CancelRequests) -> None:
        self.app = app
        self.requests = requests

    def cancel(self, task_id: str) -> CancelReport:
        _check_id(task_id)
        state: Optional[State] = None
        for look in range(LOOKS):
            state = self.where(task_id)
            if state is not None:
                break
            if look + 1 < LOOKS:
                time.sleep(LOOK_PAUSE_S)
        if state is None:
            raise UnknownTask(
                f"no queue, worker or stored result knows task {task_id}: it was never sent, "
                "or it ended and its result was read (or expired)"
            )
        if state == "finished":
            return CancelReport(task_id=task_id, state=state, detail="it had ended; its result stands")
        self.cancel_sent(task_id)
        detail = (
            "it will not run; waiting for it raises Cancelled"
            if state == "queued"
            else "a generation stops at the server within about 20 ms and raises Cancelled; other work ends on its own"
        )
        return CancelReport(task_id=task_id, state=state, detail=detail)

    def cancel_sent(self, task_id: str) -> None:
        """Cancel a task this caller sent itself, without looking for it (it may not have arrived yet)."""
        _check_id(task_id)
        self.requests.request(task_id)
        self.app.control.revoke(task_id)

    def where(self, task_id: str) -> Optional[State]:
        """Where the task is, in one look; None if nothing knows it."""
        status = self.app.backend.get_task_meta(task_id).get("status")
        if status in states.READY_STATES:
            return "finished"
        if status == states.STARTED:
            return "running"
        with self.app.connection_for_read() as connection:
            channel = connection.default_channel
            if not hasattr(channel, "unacked_key"):
                return "queued"  # not a Redis broker: nothing to search
            client = channel.client
            if any(task_id in _text(message) for message in client.hvals(channel.unacked_key)):
                return "running"
            for queue in Queue:
                for priority in channel.priority_steps:
                    if _in_list(client, channel._q_for_pri(queue.value, priority), task_id):
                        return "queued"
        return None


def _in_list(client, key: str, task_id: str) -> bool:
    start = 0
    while True:
        chunk = client.lrange(key, start, start + SCAN_CHUNK - 1)
        if any(task_id in _text(message) for message in chunk):
            return True
        if len(chunk) < SCAN_CHUNK:
            return False
        start += SCAN_CHUNK


def _check_id(task_id: object) -> None:
    if not isinstance(task_id, str) or not task_id.strip() or len(task_id) > 255:
        raise InvalidInput(f"a task id is the non-empty string submit returned, not {task_id!r}")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
