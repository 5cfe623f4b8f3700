"""The Athena client: Athena's method names and result shapes, over the queues.

    from athena_client import AthenaClient          # or AsyncAthenaClient
    client = AthenaClient()                          # ATHENA_BROKER_URL / ATHENA_RESULT_BACKEND
    vector = client.embed("a memory").embedding
    patterns = client.consolidate(events)

It sends tasks by name and imports no worker code, so Athena needs only this
package's light dependencies (celery, redis, pydantic). Every call can also be
fired and forgotten (`submit`) and fetched later (`result`). A failed task
raises its `athena_client.errors` class.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional, Sequence

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from pydantic import BaseModel, ValidationError

from athena_client.consolidation import ConsolidateOptions, ConsolidateRequest, ConsolidationResult, EpisodicEvent, Pattern
from athena_client.errors import AthenaError, InvalidInput, ServerTimeout
from athena_client.job_store import JobStore
from athena_client.jobs import (
    EmbedBulkResult,
    ItemError,
    JobState,
    JsonlSource,
    PostgresSource,
    ReembedJobRef,
    ReembedRequest,
)
from athena_client.payloads import (
    CompressionResult,
    CompressorStatus,
    CompressRequest,
    EmbedBatchRequest,
    EmbeddingBatchResult,
    EmbeddingResult,
    EmbedRequest,
    ReasoningResult,
    ReasonRequest,
)
from athena_client.routes import ENQUEUED_AT_HEADER, SERVER_HEALTH, Queue, TaskName, queue_for

DEFAULT_BROKER_URL = "redis://127.0.0.1:6380/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6380/1"
DEFAULT_TIMEOUT_S = 300.0

RESULT_TYPES: dict[TaskName, type[BaseModel]] = {
    TaskName.EMBED: EmbeddingResult,
    TaskName.EMBED_BATCH: EmbeddingBatchResult,
    TaskName.REASON: ReasoningResult,
    TaskName.COMPRESS_PROMPT: CompressionResult,
    TaskName.COMPRESSOR_STATUS: CompressorStatus,
    TaskName.CONSOLIDATE: ConsolidationResult,
    TaskName.EMBED_BULK: EmbedBulkResult,
    TaskName.REEMBED: JobState,
}


def _request(model: type[BaseModel], **fields: Any) -> Any:
    """Build a request, with a bad argument raised as InvalidInput like a worker would."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid {model.__name__}: {problems}") from None


class QueueHealth(BaseModel):
    queue: str
    workers: list[str]
    server_ready: Optional[bool] = None
    model: Optional[str] = None
    detail: Optional[str] = None

    @property
    def healthy(self) -> bool:
        return bool(self.workers) and self.server_ready is not False


class HealthReport(BaseModel):
    broker_ok: bool = True
    broker_detail: str = "ok"
    queues: dict[str, QueueHealth]
    compression: CompressorStatus

    def healthy(self, queues: Sequence[str] = ()) -> bool:
        """The broker answers, and each queue asked about (default: all) has workers and a ready server."""
        wanted = list(queues) or list(self.queues)
        ok = self.broker_ok and all(self.queues[q].healthy for q in wanted)
        if Queue.COMPRESSION.value in wanted:
            ok = ok and self.compression.ready
        return ok

    def summary(self) -> dict[str, bool]:
        """Athena's `check_health()` shape."""
        embeddings, reasoning = self.queues["embeddings"], self.queues["reasoning"]
        return {
            "embedding": bool(embeddings.workers) and bool(embeddings.server_ready),
            "reasoning": bool(reasoning.workers) and bool(reasoning.server_ready),
            "compression": bool(self.queues["compression"].workers) and self.compression.ready,
        }


class AthenaClient:
    def __init__(
        self,
        broker_url: Optional[str] = None,
        result_backend: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.timeout = timeout
        self.result_backend = result_backend or os.environ.get("ATHENA_RESULT_BACKEND", DEFAULT_RESULT_BACKEND)
        self.app = Celery(
            "athena-client",
            broker=broker_url or os.environ.get("ATHENA_BROKER_URL", DEFAULT_BROKER_URL),
            backend=self.result_backend,
            set_as_current=False,
        )
        self._jobs: Optional[JobStore] = None
        self.app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            broker_connection_retry_on_startup=True,
        )

    # --- fire and forget, fetch later ---

    def submit(self, task: TaskName, request: BaseModel, *, queue: Optional[str] = None) -> str:
        """Enqueue and return the task id at once."""
        sent = self.app.send_task(
            task.value,
            kwargs=request.model_dump(mode="json"),
            queue=queue or queue_for(task.value).value,
            headers={ENQUEUED_AT_HEADER: time.time()},
        )
        return sent.id

    def result(self, task: TaskName, task_id: str, timeout: Optional[float] = None, *, allow_in_task: bool = False) -> Any:
        """The typed result of a submitted task; waits up to `timeout` seconds.

        `allow_in_task` is for the jobs queue only, whose tasks wait on other queues' tasks by design.
        """
        wait = self.timeout if timeout is None else timeout
        try:
            data = self.app.AsyncResult(task_id).get(timeout=wait, propagate=True, disable_sync_subtasks=not allow_in_task)
        except CeleryTimeout:
            raise ServerTimeout(f"{task.value} {task_id} gave no result within {wait:.0f} s") from None
        except AthenaError:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker error we have no class for
            raise AthenaError(f"{task.value} {task_id} failed: {exc.__class__.__name__}: {exc}") from None
        return RESULT_TYPES[task].model_validate(data)

    def call(self, task: TaskName, request: BaseModel, timeout: Optional[float] = None) -> Any:
        return self.result(task, self.submit(task, request), timeout)

    # --- Athena's methods ---

    def embed(self, text: str) -> EmbeddingResult:
        return self.call(TaskName.EMBED, _request(EmbedRequest, text=text))

    def embed_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[EmbeddingResult]:
        """One result per text, as Athena expects; batches run in parallel, one server request each."""
        batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        ids = [self.submit(TaskName.EMBED_BATCH, _request(EmbedBatchRequest, texts=batch)) for batch in batches]
        results: list[EmbeddingResult] = []
        for task_id in ids:
            batch: EmbeddingBatchResult = self.result(TaskName.EMBED_BATCH, task_id)
            results += [
                EmbeddingResult(embedding=v, dimension=batch.dimension, model=batch.model, timing=batch.timing)
                for v in batch.embeddings
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
    ) -> ReasoningResult:
        request = _request(
            ReasonRequest,
            prompt=prompt, system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop),
        )
        return self.call(TaskName.REASON, request)

    def compress_prompt(
        self, context: str, instruction: str = "", compression_ratio: float = 0.5, question: str = ""
    ) -> CompressionResult:
        request = _request(CompressRequest, context=context, instruction=instruction, question=question, rate=compression_ratio)
        return self.call(TaskName.COMPRESS_PROMPT, request)

    def consolidate(self, events: Sequence[EpisodicEvent | dict], **options: Any) -> list[Pattern]:
        return self.consolidation(events, **options).patterns

    def consolidation(self, events: Sequence[EpisodicEvent | dict], **options: Any) -> ConsolidationResult:
        """The whole result: patterns, what was dropped, and each stage's timing."""
        request = _request(ConsolidateRequest, events=list(events), options=_request(ConsolidateOptions, **options))
        return self.call(TaskName.CONSOLIDATE, request)

    def consolidate_with_reasoning(
        self, events_text: str, task_description: str = "Extract the lasting patterns from these events."
    ) -> ReasoningResult:
        """Athena's free-text variant, kept for compatibility; `consolidate` returns validated patterns."""
        return self.reason(f"{task_description}\n\n{events_text}", max_tokens=1024, temperature=0.3)

    # --- re-embedding jobs (docs/reembedding.md) ---

    @property
    def jobs(self) -> JobStore:
        if self._jobs is None:
            self._jobs = JobStore.from_url(self.result_backend)
        return self._jobs

    def reembed(self, source: JsonlSource | PostgresSource | dict, **options: Any) -> str:
        """Create a re-embedding job and queue it for the jobs worker; returns the job id at once."""
        request = _request(ReembedRequest, source=source, **options)
        job = self.jobs.create(request)
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
                report[queue.value] = report[queue.value].model_copy(update=self._server_health(queue, timeout))
        compression = CompressorStatus(ready=False, reason="no compression worker online")
        if workers[Queue.COMPRESSION.value]:
            try:
                sent = self.app.send_task(TaskName.COMPRESSOR_STATUS.value, queue=Queue.COMPRESSION.value)
                compression = CompressorStatus.model_validate(sent.get(timeout=timeout))
            except CeleryTimeout:
                compression = CompressorStatus(ready=False, reason=f"compression worker did not answer in {timeout:.0f} s")
        return HealthReport(queues=report, compression=compression)

    def check_health(self) -> dict[str, bool]:
        return self.health().summary()

    def _server_health(self, queue: Queue, timeout: float) -> dict[str, Any]:
        try:
            sent = self.app.send_task(SERVER_HEALTH[queue].value, queue=queue.value)
            answer = sent.get(timeout=timeout)
        except CeleryTimeout:
            return {"server_ready": False, "detail": f"{queue.value} worker did not answer in {timeout:.0f} s"}
        return {"server_ready": bool(answer["ready"]), "detail": str(answer["detail"]), "model": answer.get("model")}

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.redis.close()
        self.app.close()

    def __enter__(self) -> "AthenaClient":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class AsyncAthenaClient:
    """The same methods, awaitable. Celery's client is blocking, so each call runs in a worker thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sync = AthenaClient(*args, **kwargs)

    def __getattr__(self, name: str):
        method = getattr(self.sync, name)
        if not callable(method):
            return method

        async def call(*args: Any, **kwargs: Any):
            return await asyncio.to_thread(method, *args, **kwargs)

        return call

    async def __aenter__(self) -> "AsyncAthenaClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.sync.close()
