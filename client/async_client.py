"""`AsyncAthenaClient`: every method of `AthenaClient`, awaitable.

Celery's client is blocking, so each call runs the sync client's method in a
thread of the clients' own pool (`in_client_thread`); the event loop is never
blocked on the broker or on a result. The pool is not asyncio's default (which
has min(32, CPUs + 4) threads, 6 on a 2-core machine), so that `asyncio.gather`
of many embeds has them all in flight at once, where the embeddings worker can
send them to the server together.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, TypeVar

from pydantic import BaseModel

from athena_client.cancelling import CancelReport
from athena_client.client import DEFAULT_TASK_DESCRIPTION, DEFAULT_TIMEOUT_S, AthenaClient
from athena_client.contract.consolidation import ConsolidationResult, EpisodicEvent, Pattern
from athena_client.contract.health import HealthReport
from athena_client.contract.jobs import ItemError, JobState, JsonlSource, PostgresSource
from athena_client.contract.payloads import CompressionResult, EmbeddingResult, EmbedPurpose, LongTextPolicy, ReasoningResult
from athena_client.contract.routes import TaskName
from athena_client.reason_stream import ReasonStream
from athena_client.shared_redis.job_store import JobStore
from athena_client.shared_redis.piece_streams import START
from athena_client.transport import KIND_DEFAULT, Deadline


T = TypeVar("T")
# Calls the async clients of a process keep in flight at once; more wait for a thread.
MAX_CALLS_IN_FLIGHT = 64
_threads: Optional[ThreadPoolExecutor] = None
_threads_made = threading.Lock()


def _client_threads() -> ThreadPoolExecutor:
    global _threads
    with _threads_made:
        if _threads is None:
            _threads = ThreadPoolExecutor(max_workers=MAX_CALLS_IN_FLIGHT, thread_name_prefix="athena-client")
        return _threads


async def in_client_thread(method: Callable[..., T], *args: Any) -> T:
    """`method(*args)`, a blocking client call, awaited from a thread of the clients' pool."""
    return await asyncio.get_running_loop().run_in_executor(_client_threads(), method, *args)


def in_client_thread_unawaited(method: Callable[..., Any], *args: Any) -> None:
    """`method(*args)` in a thread of the clients' pool, with nobody waiting for it (a coroutine being cancelled cannot)."""
    _client_threads().submit(method, *args)


_ENDED = object()


class AsyncReasonStream:
    """`ReasonStream`, iterated with `async for`: each piece is read in a client thread."""

    def __init__(self, sync: ReasonStream) -> None:
        self.sync = sync
        self._pieces: Optional[Any] = None

    @property
    def task_id(self) -> str:
        return self.sync.task_id

    @property
    def last_id(self) -> str:
        return self.sync.last_id

    @property
    def result(self) -> Optional[ReasoningResult]:
        return self.sync.result

    def __aiter__(self) -> "AsyncReasonStream":
        return self

    async def __anext__(self) -> str:
        if self._pieces is None:
            self._pieces = iter(self.sync)
        piece = await in_client_thread(next, self._pieces, _ENDED)
        if piece is _ENDED:
            raise StopAsyncIteration
        return piece

    async def text(self) -> str:
        return "".join([piece async for piece in self])

    async def cancel(self) -> None:
        await in_client_thread(self.sync.cancel)

    async def __aenter__(self) -> "AsyncReasonStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await in_client_thread(self.sync.__exit__, *exc)


class AsyncAthenaClient:
    def __init__(
        self,
        broker_url: Optional[str] = None,
        result_backend: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.sync = AthenaClient(broker_url, result_backend, timeout=timeout)

    @staticmethod
    async def _call(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await in_client_thread(functools.partial(method, *args, **kwargs))

    @property
    def timeout(self) -> float:
        return self.sync.timeout

    @property
    def jobs(self) -> JobStore:
        return self.sync.jobs

    # --- fire and forget, fetch later ---

    async def submit(
        self, task: TaskName, request: Optional[BaseModel] = None, *, queue: Optional[str] = None, deadline: Deadline = KIND_DEFAULT
    ) -> str:
        return await self._call(self.sync.submit, task, request, queue=queue, deadline=deadline)

    async def result(self, task: TaskName, task_id: str, timeout: Optional[float] = None, *, keep: bool = False) -> Any:
        return await self._call(self.sync.result, task, task_id, timeout, keep=keep)

    async def call(
        self, task: TaskName, request: Optional[BaseModel] = None, timeout: Optional[float] = None, *, deadline: Deadline = KIND_DEFAULT
    ) -> Any:
        return await self._call(self.sync.call, task, request, timeout, deadline=deadline)

    async def cancel(self, task_id: str) -> CancelReport:
        return await self._call(self.sync.cancel, task_id)

    # --- Athena's methods ---

    async def embed(
        self,
        text: str,
        *,
        purpose: EmbedPurpose = "document",
        dimensions: Optional[int] = None,
        long_text: LongTextPolicy = "fail",
        deadline: Deadline = KIND_DEFAULT,
    ) -> EmbeddingResult:
        return await self._call(self.sync.embed, text, purpose=purpose, dimensions=dimensions, long_text=long_text, deadline=deadline)

    async def embed_batch(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        *,
        purpose: EmbedPurpose = "document",
        dimensions: Optional[int] = None,
        long_text: LongTextPolicy = "fail",
        deadline: Deadline = KIND_DEFAULT,
    ) -> list[EmbeddingResult]:
        return await self._call(
            self.sync.embed_batch, texts, batch_size, purpose=purpose, dimensions=dimensions, long_text=long_text, deadline=deadline
        )

    async def reason(
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
        return await self._call(
            self.sync.reason, prompt, system, max_tokens, temperature, top_p, stop, json_schema, grammar, deadline=deadline
        )

    async def reason_stream(
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
    ) -> AsyncReasonStream:
        """`async for piece in await client.reason_stream(prompt)`; then `.result`."""
        stream = await self._call(
            self.sync.reason_stream, prompt, system, max_tokens, temperature, top_p, stop, json_schema, grammar,
            timeout=timeout, deadline=deadline,
        )
        return AsyncReasonStream(stream)

    async def resume_stream(self, task_id: str, after: str = START, *, timeout: Optional[float] = None) -> AsyncReasonStream:
        return AsyncReasonStream(await self._call(self.sync.resume_stream, task_id, after, timeout=timeout))

    async def compress_prompt(
        self, context: str, instruction: str = "", compression_ratio: float = 0.5, question: str = "", *, deadline: Deadline = KIND_DEFAULT
    ) -> CompressionResult:
        return await self._call(self.sync.compress_prompt, context, instruction, compression_ratio, question, deadline=deadline)

    async def consolidate(self, events: Sequence[EpisodicEvent | dict], *, deadline: Deadline = KIND_DEFAULT, **options: Any) -> list[Pattern]:
        return await self._call(self.sync.consolidate, events, deadline=deadline, **options)

    async def consolidation(
        self, events: Sequence[EpisodicEvent | dict], *, deadline: Deadline = KIND_DEFAULT, **options: Any
    ) -> ConsolidationResult:
        return await self._call(self.sync.consolidation, events, deadline=deadline, **options)

    async def consolidate_with_reasoning(
        self, events_text: str, task_description: str = DEFAULT_TASK_DESCRIPTION
    ) -> ReasoningResult:
        return await self._call(self.sync.consolidate_with_reasoning, events_text, task_description)

    # --- re-embedding jobs ---

    async def reembed(self, source: JsonlSource | PostgresSource | dict, **options: Any) -> str:
        return await self._call(self.sync.reembed, source, **options)

    async def resume_job(self, job_id: str) -> str:
        return await self._call(self.sync.resume_job, job_id)

    async def job(self, job_id: str) -> JobState:
        return await self._call(self.sync.job, job_id)

    async def job_errors(self, job_id: str, start: int = 0, stop: int = -1) -> list[ItemError]:
        return await self._call(self.sync.job_errors, job_id, start, stop)

    async def cancel_job(self, job_id: str) -> JobState:
        return await self._call(self.sync.cancel_job, job_id)

    # --- health ---

    async def health(self, timeout: float = 5.0) -> HealthReport:
        return await self._call(self.sync.health, timeout)

    async def check_health(self) -> dict[str, bool]:
        return await self._call(self.sync.check_health)

    async def close(self) -> None:
        await self._call(self.sync.close)

    async def __aenter__(self) -> "AsyncAthenaClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()
