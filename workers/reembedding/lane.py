"""The bulk lane as the runner sees it: batches go out as `athena.embed_bulk`
tasks on the `embeddings_bulk` queue, and come back as typed results."""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

from kombu import Connection

from athena_client.contract.errors import InvalidInput, JobError
from athena_client.contract.jobs import EmbedBulkRequest, EmbedBulkResult
from athena_client.contract.payloads import LongTextPolicy, VectorOrigin
from athena_client.contract.routes import Queue, TaskName
from athena_client.transport import TaskTransport
from athena_inference.workers.broker import queue_depth

PROBE_TEXT = "model probe"


class EmbeddingLane(Protocol):
    def submit(self, texts: Sequence[str]) -> str: ...

    def collect(self, handle: str, timeout: float) -> EmbedBulkResult:
        """The batch's result; raises ServerTimeout when it is not there within `timeout`."""

    def backlog(self) -> int:
        """Batches waiting in the lane, from every job."""

    def probe(self, timeout: float) -> VectorOrigin:
        """What makes the job's vectors now: model, profile, prefix, size (and so their space)."""

    def close(self) -> None: ...


def origin_of(result: EmbedBulkResult) -> VectorOrigin:
    """The result's origin alone, without its vectors and timing."""
    return VectorOrigin(**result.model_dump(include=set(VectorOrigin.model_fields)))


class CeleryLane:
    def __init__(self, transport: TaskTransport, *, long_text: LongTextPolicy = "fail", dimensions: Optional[int] = None) -> None:
        self.transport = transport
        # The job's policy for texts over the model's input limit.
        self.long_text = long_text
        # The job's Matryoshka size, or None for the lane's own.
        self.dimensions = dimensions
        self._connection: Optional[Connection] = None

    def submit(self, texts: Sequence[str]) -> str:
        # Stores hold documents: the worker puts its profile's document prefix before each text.
        request = EmbedBulkRequest(texts=list(texts), long_text=self.long_text, purpose="document", dimensions=self.dimensions)
        return self.transport.submit(TaskName.EMBED_BULK, request)

    def collect(self, handle: str, timeout: float) -> EmbedBulkResult:
        # The jobs worker waits on another queue's tasks by design (see tasks/jobs.py).
        # Read once and deleted: a batch's vectors are written to the store at once.
        return self.transport.result(TaskName.EMBED_BULK, handle, timeout, allow_in_task=True)

    def backlog(self) -> int:
        if self._connection is None:
            self._connection = self.transport.app.connection_for_write()
        return queue_depth(self._connection, Queue.EMBEDDINGS_BULK.value)

    def probe(self, timeout: float) -> VectorOrigin:
        try:
            result = self.collect(self.submit([PROBE_TEXT]), timeout)
        except InvalidInput as exc:
            # The worker's seam checks the size against its model's profile.
            raise JobError(f"the bulk lane cannot make this job's vectors ({exc}); nothing was written") from None
        vector = result.embeddings[0]
        if vector is None:
            raise JobError(f"the bulk lane could not embed its probe text: {result.errors[0]}")
        if len(vector) != result.dimension:
            raise JobError(f"the bulk lane returned a {len(vector)}-d probe vector but says it makes {result.dimension}-d ones")
        return origin_of(result)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None
        self.transport.close()
