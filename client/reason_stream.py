"""A generation read as it is written: `AthenaClient.reason_stream` and its resumption.

Iterating a `ReasonStream` yields the answer's text pieces as the reasoning
worker gets them from the server, through the task's Redis stream
(client/shared_redis/piece_streams.py); once they end, `result` holds the same
typed `ReasoningResult` as `reason` returns, with its timing, and a failed
generation raises its error. `last_id` is the stream id of the last piece
yielded: a reader that lost its connection calls `resume_stream(task_id,
last_id)` and goes on from the piece after it. Used as a context manager,
a stream left before its end cancels its generation (a chat whose reader
went away frees the server's slot); without one, a reader that stops reading
leaves it running, for another to resume.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Optional

from celery import states

from athena_client.contract.errors import ServerTimeout
from athena_client.contract.payloads import ReasoningResult
from athena_client.contract.routes import TaskName
from athena_client.result_waiter import Ticket
from athena_client.shared_redis.piece_streams import START, PieceStreams
from athena_client.transport import TaskTransport

# How long one read of the stream blocks before the reader looks whether the
# task ended without writing to it (refused, expired, or cancelled while queued).
READ_BLOCK_MS = 250


class ReasonStream:
    def __init__(
        self,
        transport: TaskTransport,
        streams: PieceStreams,
        task_id: str,
        ticket: Ticket,
        *,
        timeout: float,
        after: str = START,
        cancel: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self.transport = transport
        self.task_id = task_id
        self.last_id = after
        self.result: Optional[ReasoningResult] = None
        self._streams = streams
        self._ticket = ticket
        self._deadline = time.monotonic() + timeout
        self._consumed = False
        self._ended = False
        self._cancel = cancel

    def __iter__(self) -> Iterator[str]:
        if self._consumed:
            return
        self._consumed = True
        try:
            yield from self._pieces()
        except BaseException:
            self.transport.waiter.release(self._ticket)
            raise
        self._ended = True
        self.result = self.transport._read(TaskName.REASON, self.task_id, self._ticket, self._remaining(), keep=False)

    def cancel(self) -> None:
        """Stop the generation: the server frees its slot, and reading on raises `Cancelled`."""
        if self._cancel is None:
            raise RuntimeError("this stream was made without a client to cancel through")
        self._cancel(self.task_id)

    def __enter__(self) -> "ReasonStream":
        return self

    def __exit__(self, *_: Any) -> None:
        if not self._ended and self._cancel is not None:
            self._cancel(self.task_id)

    def text(self) -> str:
        """The rest of the answer, read to its end."""
        return "".join(self)

    def _pieces(self) -> Iterator[str]:
        while True:
            entries = self._streams.read(self.task_id, self.last_id, block_ms=READ_BLOCK_MS)
            for entry in entries:
                self.last_id = entry.id
                if entry.end is not None:
                    return
                yield entry.text
            if not entries:
                if self._ended_unstreamed():
                    return
                if self._remaining() <= 0:
                    raise ServerTimeout(f"{TaskName.REASON.value} {self.task_id} streamed nothing more in time")

    def _ended_unstreamed(self) -> bool:
        """Whether the task ended without an end entry: it never generated (refused,
        expired, cancelled while queued); its result says why."""
        if self._ticket.done.is_set():
            return not self._streams.read(self.task_id, self.last_id, block_ms=None)
        return self.transport.app.backend.get_task_meta(self.task_id).get("status") in states.READY_STATES

    def _remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())
