"""The Athena client: Athena's method names and result shapes, over the queues.

    from athena_client import AthenaClient          # or AsyncAthenaClient
    client = AthenaClient()                          # ATHENA_BROKER_URL / ATHENA_RESULT_BACKEND
    vector = client.embed("a memory").embedding
    patterns = client.consolidate(events)

It sends tasks by name and imports no worker code, so Athena needs only this
package's light dependencies (celery, redis, pydantic). Every call can also be
fired and forgotten (`submit`) and fetched later (`result`). A failed task
raises its `athena_client.contract.errors` class.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from pydantic import BaseModel

from athena_client.contract.consolidation import ConsolidateOptions, ConsolidateRequest, ConsolidationResult, EpisodicEvent, Pattern
from athena_client.contract.errors import ServerTimeout
from athena_client.contract.health import HEALTH_COMMAND, HealthReport, QueueHealth, ServerHealth
from athena_client.contract.jobs import ItemError, JobState, JsonlSource, PostgresSource, ReembedJobRef, ReembedRequest
from athena_client.contract.payloads import (
    CompressionResult,
    CompressorStatus,
    CompressRequest,
    EmbedBatchRequest,
    EmbedPurpose,
    EmbeddingBatchResult,
    EmbeddingResult,
    EmbedRequest,
    LongTextPolicy,
    ReasoningResult,
    ReasonRequest,
    VectorOrigin,
)
from athena_client.cancelling import Canceller, CancelReport
from athena_client.contract.errors import UnknownTask
from athena_client.contract.routes import SERVER_HEALTH, Queue, TaskName
from athena_client.contract.validation import parse
from athena_client.reason_stream import ReasonStream
from athena_client.shared_redis.cancel_requests import CancelRequests
from athena_client.shared_redis.job_store import JobStore, job_ttl_from_env
from athena_client.shared_redis.piece_streams import START, PieceStreams
from athena_client.shared_redis.redis_connect import redis_client
from athena_client.transport import KIND_DEFAULT, Deadline, TaskTransport, waited_deadline

DEFAULT_BROKER_URL = "redis://127.0.0.1:6380/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6380/1"
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_TASK_DESCRIPTION = "Extract the lasting patterns from these events."


class AthenaClient:
    def __init__(
        self,
        broker_url: Optional[str] = None,
        result_backend: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.result_backend = result_backend or os.environ.get("ATHENA_RESULT_BACKEND", DEFAULT_RESULT_BACKEND)
        broker = broker_url or os.environ.get("ATHENA_BROKER_URL", DEFAULT_BROKER_URL)
        self.transport = TaskTransport.connect(broker, self.result_backend, timeout=timeout)
        self.app = self.transport.app
        self._jobs: Optional[JobStore] = None
        self._canceller: Optional[Canceller] = None
        self._streams: Optional[PieceStreams] = None

    @property
    def timeout(self) -> float:
        return self.transport.timeout

    # --- fire and forget, fetch later ---

    def submit(
        self, task: TaskName, request: Optional[BaseModel] = None, *, queue: Optional[str] = None, deadline: Deadline = KIND_DEFAULT
    ) -> str:
        """Enqueue and return the task id at once. Not started after `deadline`
        (seconds from now, or an aware datetime; None: never too late; by default
        the kind's own, e.g. 30 s for an embed): it then ends `Expired`, unrun."""
        return self.transport.submit(task, request, queue=queue, deadline=deadline)

    def result(self, task: TaskName, task_id: str, timeout: Optional[float] = None, *, keep: bool = False) -> Any:
        """The typed result of a submitted task; waits up to `timeout` seconds.

        The result is deleted from Redis once read; `keep=True` leaves it there
        (until ATHENA_RESULT_EXPIRES_S) for another reader.
        """
        return self.transport.result(task, task_id, timeout, keep=keep)

    def call(
        self, task: TaskName, request: Optional[BaseModel] = None, timeout: Optional[float] = None, *, deadline: Deadline = KIND_DEFAULT
    ) -> Any:
        """Send and wait up to `timeout`; by default not started after the kind's deadline or the wait, whichever is sooner."""
        return self.transport.call(task, request, timeout, deadline=deadline)

    def cancel(self, task_id: str) -> CancelReport:
        """Stop a task: queued, it never runs; running, its generation stops at the
        server, freeing the slot. Waiting for it then raises `Cancelled`. A
        finished task is left as it is (the report says so); an id that no
        queue, worker or result knows raises `UnknownTask`."""
        return self.canceller.cancel(task_id)

    @property
    def canceller(self) -> Canceller:
        if self._canceller is None:
            self._canceller = Canceller(self.app, CancelRequests(self._caller_redis()))
        return self._canceller

    def _caller_redis(self):
        if self._streams is None:
            self._streams = PieceStreams(redis_client(self.result_backend, socket_timeout=30, socket_connect_timeout=5))
        return self._streams.redis

    # --- Athena's methods ---

    def embed(
        self,
        text: str,
        *,
        purpose: EmbedPurpose = "document",
        dimensions: Optional[int] = None,
        long_text: LongTextPolicy = "fail",
        deadline: Deadline = KIND_DEFAULT,
    ) -> EmbeddingResult:
        """`text`'s vector. `purpose` is "document" for what is stored and "query"
        for what is searched with: the worker adds the prefix its model was
        trained with (nomic's `search_document: ` / `search_query: `).
        `dimensions` cuts the vector to a shorter size its Matryoshka model allows."""
        fields = {"text": text, "purpose": purpose, "dimensions": dimensions, "long_text": long_text}
        return self.call(TaskName.EMBED, parse(EmbedRequest, fields), deadline=deadline)

    def embed_batch(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        *,
        purpose: EmbedPurpose = "document",
        dimensions: Optional[int] = None,
        long_text: LongTextPolicy = "fail",
        deadline: Deadline = KIND_DEFAULT,
    ) -> list[EmbeddingResult]:
        """One result per text, as Athena expects; batches run in parallel, one server request each."""
        batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        fields = {"purpose": purpose, "dimensions": dimensions, "long_text": long_text}
        ids = [
            self.submit(TaskName.EMBED_BATCH, parse(EmbedBatchRequest, {"texts": batch, **fields}), deadline=deadline)
            for batch in batches
        ]
        results: list[EmbeddingResult] = []
        for task_id in ids:
            batch: EmbeddingBatchResult = self.result(TaskName.EMBED_BATCH, task_id)
            origin = {name: getattr(batch, name) for name in VectorOrigin.model_fields}
            results += [
                EmbeddingResult(embedding=v, note=batch.notes[i] if batch.notes else None, timing=batch.timing, **origin)
                for i, v in enumerate(batch.embeddings)
            ]
        return results

    def reason(
        self,
        prompt: str,
        system: Optional[str] = None,
        max_tokens: int = 2048,
        temperature: float = 0.7,
        top_p: float = 0.9,
        stop: Sequence[str] = (),
        json_schema: Optional[dict[str, Any]] = None,
        grammar: Optional[str] = None,
        *,
        deadline: Deadline = KIND_DEFAULT,
    ) -> ReasoningResult:
        """Athena's `reason`; with `json_schema` or a GBNF `grammar`, the answer is held to it."""
        fields = dict(
            prompt=prompt, system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop),
            json_schema=json_schema, grammar=grammar,
        )
        return self.call(TaskName.REASON, parse(ReasonRequest, fields), deadline=deadline)

    def reason_stream(
        self,
        prompt: str,
        system: Optional[str] = None,
        max_tokens: int = 2048,
        temperature: float = 0.7,
        top_p: float = 0.9,
        stop: Sequence[str] = (),
        json_schema: Optional[dict[str, Any]] = None,
        grammar: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        deadline: Deadline = KIND_DEFAULT,
    ) -> ReasonStream:
        """`reason`, read as it is written: iterate for the text pieces, then
        `.result` is the `ReasoningResult`. `.task_id` and `.last_id` let a
        reader that lost its connection go on (`resume_stream`); `cancel(task_id)` stops it."""
        fields = dict(
            prompt=prompt, system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop),
            json_schema=json_schema, grammar=grammar, stream=True,
        )
        request = parse(ReasonRequest, fields)
        wait = self.timeout if timeout is None else timeout
        task_id = self.transport.waiter.task_id()
        ticket = self.transport.waiter.expect(task_id, not_sent_yet=True)
        try:
            self.transport.submit(TaskName.REASON, request, task_id=task_id, deadline=waited_deadline(TaskName.REASON, deadline, wait))
        except BaseException:
            self.transport.waiter.release(ticket)
            raise
        return ReasonStream(self.transport, self._piece_streams(), task_id, ticket, timeout=wait, cancel=self.canceller.cancel_sent)

    def resume_stream(self, task_id: str, after: str = START, *, timeout: Optional[float] = None) -> ReasonStream:
        """A streamed generation again, from the piece after stream id `after`
        (a `ReasonStream`'s `last_id`); from its start by default."""
        streams = self._piece_streams()
        if not streams.exists(task_id) and self.canceller.where(task_id) is None:
            raise UnknownTask(f"no streamed generation {task_id} is on record (never sent, or its pieces expired)")
        ticket = self.transport.waiter.expect(task_id)
        wait = self.timeout if timeout is None else timeout
        return ReasonStream(self.transport, streams, task_id, ticket, timeout=wait, after=after, cancel=self.canceller.cancel_sent)

    def _piece_streams(self) -> PieceStreams:
        self._caller_redis()
        assert self._streams is not None
        return self._streams

    def compress_prompt(
        self, context: str, instruction: str = "", compression_ratio: float = 0.5, question: str = "", *, deadline: Deadline = KIND_DEFAULT
    ) -> CompressionResult:
        fields = dict(context=context, instruction=instruction, question=question, rate=compression_ratio)
        return self.call(TaskName.COMPRESS_PROMPT, parse(CompressRequest, fields), deadline=deadline)

    def consolidate(self, events: Sequence[EpisodicEvent | dict], *, deadline: Deadline = KIND_DEFAULT, **options: Any) -> list[Pattern]:
        return self.consolidation(events, deadline=deadline, **options).patterns

    def consolidation(
        self, events: Sequence[EpisodicEvent | dict], *, deadline: Deadline = KIND_DEFAULT, **options: Any
    ) -> ConsolidationResult:
        """The whole result: patterns, what was dropped, and each stage's timing."""
        request = parse(ConsolidateRequest, {"events": list(events), "options": parse(ConsolidateOptions, options)})
        return self.call(TaskName.CONSOLIDATE, request, deadline=deadline)

    def consolidate_with_reasoning(self, events_text: str, task_description: str = DEFAULT_TASK_DESCRIPTION) -> ReasoningResult:
        """Athena's free-text variant, kept for compatibility; `consolidate` returns validated patterns."""
        return self.reason(f"{task_description}\n\n{events_text}", max_tokens=1024, temperature=0.3)

    # --- re-embedding jobs (docs/reembedding.md) ---

    @property
    def jobs(self) -> JobStore:
        if self._jobs is None:
            self._jobs = JobStore.from_url(self.result_backend, ttl_s=job_ttl_from_env())
        return self._jobs

    def reembed(self, source: JsonlSource | PostgresSource | dict, **options: Any) -> str:
        """Create a re-embedding job and queue it for the jobs worker; returns the job id at once."""
        job = self.jobs.create(parse(ReembedRequest, {"source": source, **options}))
        self.submit(TaskName.REEMBED, ReembedJobRef(job_id=job.job_id))
        return job.job_id

    def resume_job(self, job_id: str) -> str:
        """Queue an interrupted, failed or cancelled job again; it goes on from its checkpoint."""
        self.jobs.clear_cancel(job_id)
        self.submit(TaskName.REEMBED, ReembedJobRef(job_id=job_id))
        return job_id

    def job(self, job_id: str) -> JobState:
        return self.jobs.get(job_id)

    def job_errors(self, job_id: str, start: int = 0, stop: int = -1) -> list[ItemError]:
        return self.jobs.errors(job_id, start, stop)

    def cancel_job(self, job_id: str) -> JobState:
        return self.jobs.request_cancel(job_id)

    # --- health ---

    def health(self, timeout: float = 5.0) -> HealthReport:
        """Per queue: its workers, and its server's readiness as the queue's own worker sees it."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - every way a broker can be unreachable
            down = {q.value: QueueHealth(queue=q.value, workers=[], detail="broker unreachable") for q in Queue}
            return HealthReport(
                broker_ok=False,
                broker_detail=f"{exc.__class__.__name__}: {exc}",
                queues=down,
                compression=CompressorStatus(ready=False, reason="broker unreachable"),
            )
        replies = self.app.control.inspect(timeout=min(timeout, 2.0)).active_queues() or {}
        workers: dict[str, list[str]] = {q.value: [] for q in Queue}
        for worker, queues in replies.items():
            for queue in queues:
                if queue["name"] in workers:
                    workers[queue["name"]].append(worker)
        report = {q: QueueHealth(queue=q, workers=sorted(w)) for q, w in workers.items()}
        for queue in SERVER_HEALTH:
            if workers[queue.value]:
                report[queue.value] = report[queue.value].with_server(self._server_health(queue, workers[queue.value], timeout))
        compression = CompressorStatus(ready=False, reason="no compression worker online")
        if workers[Queue.COMPRESSION.value]:
            try:
                compression = self.call(TaskName.COMPRESSOR_STATUS, timeout=timeout)
            except ServerTimeout:
                compression = CompressorStatus(ready=False, reason=f"compression worker did not answer in {timeout:.0f} s")
        return HealthReport(queues=report, compression=compression)

    def check_health(self) -> dict[str, bool]:
        return self.health().summary()

    def _server_health(self, queue: Queue, workers: list[str], timeout: float) -> ServerHealth:
        """The first of the queue's workers to answer about its server. Asked as a
        remote control command, which a worker's main process answers at once, so
        the look never waits in the queue behind a long generation."""
        replies = self.app.control.broadcast(
            HEALTH_COMMAND, arguments={"queue": queue.value}, destination=workers, reply=True, timeout=timeout, limit=1
        )
        for reply in replies or []:
            for answer in reply.values():
                if isinstance(answer, dict) and "ready" in answer:
                    return ServerHealth.model_validate(answer)
                return ServerHealth(ready=False, detail=f"{queue.value} worker could not look: {answer}")
        return ServerHealth(ready=False, detail=f"{queue.value} worker did not answer in {timeout:.0f} s")

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.redis.close()
        if self._streams is not None:
            self._streams.redis.close()
        self.transport.close()

    def __enter__(self) -> "AthenaClient":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
