"""Waiting on many task results over one Redis connection.

Celery's `AsyncResult.get` gives each calling thread its own result backend,
its own pub/sub connection and its own drainer loop. With 32 embeds in flight
from one process (Athena's `asyncio.gather`), those drainers took 63% of the
client's busy time (py-spy over bench/batching.py), on the same two cores the
model needs. Here one thread per client process reads one pub/sub connection
and hands each result to the thread waiting for it.

Celery's Redis backend stores a result with SET and then PUBLISHes it on a
channel named like its key. A waiter subscribes first; once Redis has
confirmed the subscription, it reads the key once, for a result stored before
that. No result falls between the two. After a lost connection the listener
subscribes again and reads every awaited key again, for results stored while
it was away.

The tasks this process sends itself need none of that per task. Their ids
start with the waiter's own prefix (`task_id()`), and the listener subscribes
once to the pattern of their channels. A task sent once that subscription is
confirmed cannot publish its result unheard, so its wait costs no SUBSCRIBE,
GET or UNSUBSCRIBE: three Redis commands a call, about a sixth of the
client's CPU for an embed (bench/queue_cpu.py). Any other id (a task another
process sent, a result fetched later) is waited for as above.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Optional

import redis

log = logging.getLogger(__name__)

# Errors that mean "Redis is away for now": the wait goes on, and the listener reconnects.
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, OSError)
# How long the listener blocks on one read: the longest a close waits for it.
READ_TIMEOUT_S = 0.5
RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
# The status given to a stored result that cannot be decoded: final, and not a success.
UNREADABLE = "UNREADABLE"
# Celery's state of a task a worker has begun (celery.states.STARTED); stored
# only for tasks declared with `track_started`.
STARTED = "STARTED"


class WaitTimedOut(Exception):
    """No final state for the task within the time given."""


class Ticket:
    """One caller's wait for one task's result."""

    __slots__ = ("channel", "subscribed", "heard_from_start", "started", "done", "meta")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.subscribed = threading.Event()
        # Listened for since before the task was sent: nothing stored can have gone unheard.
        self.heard_from_start = False
        # Set once the task is seen running (its STARTED state) or finished.
        self.started = threading.Event()
        self.done = threading.Event()
        self.meta: Optional[dict] = None


class ResultWaiter:
    """Subscribes to each awaited result's channel on one connection, read by one thread.

    `decode` turns a stored payload into Celery's meta dict (its status and
    result, with a failure's exception rebuilt); `ready` says whether a status
    is final (Celery's READY_STATES: a RETRY or STARTED state is not). A
    STARTED state is not final but is noted (`wait_started`), so that a caller
    can time a task's run apart from its wait in the queue.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_for: Callable[[str], str],
        decode: Callable[[Any], dict],
        ready: frozenset[str],
    ) -> None:
        self._client = client
        self._key_for = key_for
        self._decode = decode
        self._ready = ready
        self._start()

    @classmethod
    def for_backend(cls, backend: Any) -> "ResultWaiter":
        """A waiter over Celery's Redis result backend: its connection settings, its keys, its decoding."""
        from celery.states import READY_STATES

        return cls(backend.client, key_for=_text_key(backend), decode=backend.decode_result, ready=frozenset(READY_STATES))

    def _start(self) -> None:
        # Also the reset after a fork: the child has neither the thread nor a right to the parent's socket.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Ticket]] = {}
        self._pubsub = self._client.pubsub()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        # The listener's own channel, subscribed for as long as it runs. redis-py
        # stops reading a pub/sub connection with no subscription left, and a
        # subscription racing the last unsubscribe could go unread; with this
        # one there is always one. `close` publishes on it to wake the listener.
        self._own_channel = f"athena-result-waiter:{uuid.uuid4().hex}"
        # The ids of the tasks this process sends, their channels' common start, and the one pattern they match.
        self._id_prefix = f"athena-{uuid.uuid4().hex[:12]}-"
        self._own_channels = self._key_for(self._id_prefix)
        self._own_results = self._own_channels + "*"
        self._own_results_heard = threading.Event()

    def task_id(self) -> str:
        """A new id for a task this process is about to send: its result comes through the
        subscription this waiter already holds."""
        if self._pid != os.getpid():
            self._start()
        return f"{self._id_prefix}{uuid.uuid4()}"

    def expect(self, task_id: str, *, not_sent_yet: bool = False) -> Ticket:
        """Start listening for `task_id`'s result; call before the task is sent when you can
        (and say so: `not_sent_yet`)."""
        if self._pid != os.getpid():
            self._start()
        ticket = Ticket(self._key_for(task_id))
        with self._lock:
            if self._closed:
                raise RuntimeError("the result waiter is closed")
            if self._thread is None:
                self._subscribe(self._own_channel)
                self._psubscribe(self._own_results)
                self._thread = threading.Thread(target=self._listen, name="athena-result-waiter", daemon=True)
                self._thread.start()
            others = self._waiting.setdefault(ticket.channel, [])
            others.append(ticket)
            if task_id.startswith(self._id_prefix):
                if self._own_results_heard.is_set():
                    ticket.subscribed.set()
                    ticket.heard_from_start = not_sent_yet
            elif len(others) > 1:
                # Already subscribed for an earlier waiter; a confirmation seen then counts now.
                if any(t.subscribed.is_set() for t in others):
                    ticket.subscribed.set()
            else:
                self._subscribe(ticket.channel)
        return ticket

    def wait(self, ticket: Ticket, timeout: float) -> dict:
        """The task's final meta (status, result); raises WaitTimedOut past `timeout` seconds."""
        deadline = time.monotonic() + timeout
        try:
            if ticket.subscribed.wait(max(0.0, deadline - time.monotonic())) and not ticket.done.is_set() and not ticket.heard_from_start:
                self._read_stored(ticket)
            if not ticket.done.wait(max(0.0, deadline - time.monotonic())):
                raise WaitTimedOut(ticket.channel)
            assert ticket.meta is not None
            return ticket.meta
        finally:
            self.release(ticket)

    def wait_started(self, ticket: Ticket, timeout: float) -> bool:
        """Whether the task started, or finished, within `timeout` seconds.

        A task stores a STARTED state only when it is declared with
        `track_started`; for any other, this is whether it finished. The ticket
        stays open: `release` it, or `wait` on it for the result.
        """
        deadline = time.monotonic() + timeout
        if ticket.subscribed.wait(timeout) and not ticket.started.is_set() and not ticket.heard_from_start:
            self._read_stored(ticket)
        return ticket.started.wait(max(0.0, deadline - time.monotonic()))

    def release(self, ticket: Ticket) -> None:
        """Stop listening for this ticket (wait does it; for a ticket never waited on)."""
        with self._lock:
            others = self._waiting.get(ticket.channel, [])
            if ticket in others:
                others.remove(ticket)
            if others or ticket.channel not in self._waiting:
                return
            del self._waiting[ticket.channel]
            if ticket.channel.startswith(self._own_channels):
                return  # heard through the pattern, which stays
            try:
                self._pubsub.unsubscribe(ticket.channel)
            except REDIS_AWAY:
                pass  # the reconnection subscribes only to what is still awaited

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            for tickets in self._waiting.values():
                for ticket in tickets:
                    ticket.subscribed.set()  # wake waiters; they time out or read the key
        if thread is not None and thread is not threading.current_thread():
            try:
                self._client.publish(self._own_channel, b"")
            except REDIS_AWAY:
                pass  # it notices within READ_TIMEOUT_S
            thread.join(READ_TIMEOUT_S * 4)
        self._pubsub.close()

    # --- the listener thread ---

    def _listen(self) -> None:
        failures = 0
        while not self._closed:
            try:
                if not self._pubsub.subscribed:
                    # Its own channel is always subscribed: this one's subscribe failed, Redis being away.
                    raise redis.ConnectionError("not subscribed")
                message = self._pubsub.get_message(timeout=READ_TIMEOUT_S)
            except REDIS_AWAY:
                if self._closed:
                    return
                failures += 1
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S)) - 1]
                # Worth a warning only while someone waits; an idle client just keeps trying.
                level = logging.WARNING if self._waiting else logging.DEBUG
                log.log(level, "result waiter lost Redis; reconnecting in %.2f s", delay, exc_info=failures == 1)
                time.sleep(delay)
                self._reconnect()
                continue
            except Exception:  # noqa: BLE001 - a bug here must not leave every caller waiting silently
                log.exception("result waiter failed reading a message; it goes on")
                time.sleep(READ_TIMEOUT_S)
                continue
            failures = 0
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: dict) -> None:
        channel = _text(message.get("channel"))
        kind = message.get("type")
        if kind == "psubscribe":
            # Every awaited task of this process, from now on and (after a reconnection) meanwhile.
            self._own_results_heard.set()
            with self._lock:
                channels = [name for name in self._waiting if name.startswith(self._own_channels)]
            for name in channels:
                self._on_subscribed(name)
            return
        with self._lock:
            tickets = list(self._waiting.get(channel, ()))
        if kind == "subscribe":
            self._on_subscribed(channel)
        elif kind in ("message", "pmessage") and tickets:
            self._settle(tickets, message["data"])

    def _on_subscribed(self, channel: str) -> None:
        with self._lock:
            tickets = list(self._waiting.get(channel, ()))
        for ticket in tickets:
            if ticket.subscribed.is_set():
                # Subscribed again after a reconnection: the result may have been published meanwhile.
                self._read_stored(ticket)
            ticket.subscribed.set()

    def _reconnect(self) -> None:
        with self._lock:
            if self._closed:
                return
            # Until the pattern is confirmed again, a new wait reads its key as any other does.
            self._own_results_heard.clear()
            try:
                self._pubsub.close()
            except REDIS_AWAY:
                pass
            self._pubsub = self._client.pubsub()
            try:
                self._pubsub.subscribe(self._own_channel, *(name for name in self._waiting if not name.startswith(self._own_channels)))
                self._pubsub.psubscribe(self._own_results)
            except REDIS_AWAY:
                pass  # still away: the next read fails and brings us back here

    # --- shared ---

    def _subscribe(self, channel: str) -> None:
        try:
            self._pubsub.subscribe(channel)
        except REDIS_AWAY:
            pass  # the listener's reconnection subscribes to every awaited channel

    def _psubscribe(self, pattern: str) -> None:
        try:
            self._pubsub.psubscribe(pattern)
        except REDIS_AWAY:
            pass  # the listener's reconnection subscribes to it again

    def _read_stored(self, ticket: Ticket) -> None:
        try:
            stored = self._client.get(ticket.channel)
        except REDIS_AWAY:
            return  # the reconnection reads it again
        if stored is not None:
            self._settle([ticket], stored)

    def _settle(self, tickets: list[Ticket], payload: Any) -> None:
        try:
            meta = self._decode(payload)
        except Exception as exc:  # noqa: BLE001 - the waiter hears of it now, not at its timeout
            meta = {"status": UNREADABLE, "result": exc}
        status = meta.get("status") if meta is not None else None
        if status == STARTED:
            for ticket in tickets:
                ticket.started.set()
        if status not in self._ready | {UNREADABLE}:
            return
        for ticket in tickets:
            if not ticket.done.is_set():
                ticket.meta = meta
                ticket.started.set()
                ticket.done.set()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_key(backend: Any) -> Callable[[str], str]:
    return lambda task_id: _text(backend.get_key_for_task(task_id))
