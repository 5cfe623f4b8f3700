"""The bulk lane as the runner sees it: batches go out as `athena.embed_bulk`
tasks on the `embeddings_bulk` queue, and come back as typed results."""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

from kombu import Connection

from athena_client.errors import JobError
from athena_client.jobs import EmbedBulkRequest, EmbedBulkResult
from athena_client.payloads import LongTextPolicy
from athena_client.routes import Queue, TaskName
from athena_client.transport import TaskTransport
from athena_inference.workers.broker import queue_depth

PROBE_TEXT = "model probe"


class EmbeddingLane(Protocol):
    def submit(self, texts: Sequence[str]) -> str: ...

    def collect(self, handle: str, timeout: float) -> EmbedBulkResult:
        """The batch's result; raises ServerTimeout when it is not there within `timeout`."""

    def backlog(self) -> int:
        """Batches waiting in the lane, from every job."""

    def probe(self, timeout: float) -> tuple[str, int]:
        """The model id and dimension the lane serves now."""

    def close(self) -> None: ...


class CeleryLane:
    def __init__(self, transport: TaskTransport, *, long_text: LongTextPolicy = "fail") -> None:
        self.transport = transport
        # The job's policy for texts over the model's input limit.
        self.long_text = long_text
        self._connection: Optional[Connection] = None

    def submit(self, texts: Sequence[str]) -> str:
        return self.transport.submit(TaskName.EMBED_BULK, EmbedBulkRequest(texts=list(texts), long_text=self.long_text))

    def collect(self, handle: str, timeout: float) -> EmbedBulkResult:
        # The jobs worker waits on another queue's tasks by design (see tasks/jobs.py).
        # Read once and deleted: a batch's vectors are written to the store at once.
        return self.transport.result(TaskName.EMBED_BULK, handle, timeout, allow_in_task=True)

    def backlog(self) -> int:
        if self._connection is None:
            self._connection = self.transport.app.connection_for_write()
        return queue_depth(self._connection, Queue.EMBEDDINGS_BULK.value)

    def probe(self, timeout: float) -> tuple[str, int]:
        result = self.collect(self.submit([PROBE_TEXT]), timeout)
        vector = result.embeddings[0]
        if vector is None:
            raise JobError(f"the bulk lane could not embed its probe text: {result.errors[0]}")
        return result.model, len(vector)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None
        self.transport.close()
