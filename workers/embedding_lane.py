"""The seams a re-embedding job talks through: the bulk lane (a Celery queue in
front of its own llama-server) and the Redis cache of vectors already made."""

from __future__ import annotations

import hashlib
from array import array
from typing import Protocol, Sequence

import redis

from athena_client.client import AthenaClient
from athena_client.errors import JobError
from athena_client.jobs import EmbedBulkRequest, EmbedBulkResult
from athena_client.routes import Queue, TaskName
from athena_inference.workers.queue_depth import queue_depth

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
    """Batches as `athena.embed_bulk` tasks on the `embeddings_bulk` queue."""

    def __init__(self, client: AthenaClient) -> None:
        self.client = client
        self._connection = None

    def submit(self, texts: Sequence[str]) -> str:
        return self.client.submit(TaskName.EMBED_BULK, EmbedBulkRequest(texts=list(texts)))

    def collect(self, handle: str, timeout: float) -> EmbedBulkResult:
        result = self.client.result(TaskName.EMBED_BULK, handle, timeout, allow_in_task=True)
        # A batch's vectors are written to the store at once; keeping them in Redis for a day would not help anyone.
        self.client.app.AsyncResult(handle).forget()
        return result

    def backlog(self) -> int:
        if self._connection is None:
            self._connection = self.client.app.connection_for_write()
        return queue_depth(self._connection, Queue.EMBEDDINGS_BULK.value)

    def probe(self, timeout: float) -> tuple[str, int]:
        result = self.collect(self.submit([PROBE_TEXT]), timeout)
        vector = result.embeddings[0]
        if vector is None:
            raise JobError(f"the bulk lane could not embed its probe text: {result.errors[0]}")
        return result.model, len(vector)

    def close(self) -> None:
        self._release()
        self.client.close()

    def _release(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None


class EmbeddingCache:
    """Vectors by (model, text hash), as float32 bytes, so a duplicate text is embedded once."""

    PREFIX = "athena:embcache:"

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def _key(self, model: str, sha: str) -> str:
        return f"{self.PREFIX}{hashlib.sha256(model.encode()).hexdigest()[:16]}:{sha}"

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, list[float]]:
        if not hashes or self.ttl_s == 0:
            return {}
        found: dict[str, list[float]] = {}
        for sha, blob in zip(hashes, self.redis.mget([self._key(model, h) for h in hashes]), strict=True):
            if blob is not None:
                vector = array("f")
                vector.frombytes(blob)
                found[sha] = vector.tolist()
        return found

    def put_many(self, model: str, vectors: dict[str, list[float]]) -> None:
        if not vectors or self.ttl_s == 0:
            return
        pipe = self.redis.pipeline(transaction=False)
        for sha, vector in vectors.items():
            pipe.set(self._key(model, sha), array("f", vector).tobytes(), ex=self.ttl_s)
        pipe.execute()

