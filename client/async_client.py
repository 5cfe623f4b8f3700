"""`AsyncAthenaClient`: every method of `AthenaClient`, awaitable.

Celery's client is blocking, so each call runs the sync client's method in a
worker thread (`asyncio.to_thread`); the event loop is never blocked on the
broker or on a result.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Sequence

from pydantic import BaseModel

from athena_client.client import DEFAULT_TASK_DESCRIPTION, DEFAULT_TIMEOUT_S, AthenaClient
from athena_client.consolidation import ConsolidationResult, EpisodicEvent, Pattern
from athena_client.health import HealthReport
from athena_client.job_store import JobStore
from athena_client.jobs import ItemError, JobState, JsonlSource, PostgresSource
from athena_client.payloads import CompressionResult, EmbeddingResult, ReasoningResult
from athena_client.routes import TaskName


class AsyncAthenaClient:
    def __init__(
        self,
        broker_url: Optional[str] = None,
        result_backend: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.sync = AthenaClient(broker_url, result_backend, timeout=timeout)

    @property
    def timeout(self) -> float:
        return self.sync.timeout

    @property
    def jobs(self) -> JobStore:
        return self.sync.jobs

    # --- fire and forget, fetch later ---

    async def submit(self, task: TaskName, request: Optional[BaseModel] = None, *, queue: Optional[str] = None) -> str:
        return await asyncio.to_thread(self.sync.submit, task, request, queue=queue)

    async def result(self, task: TaskName, task_id: str, timeout: Optional[float] = None) -> Any:
        return await asyncio.to_thread(self.sync.result, task, task_id, timeout)

    async def call(self, task: TaskName, request: Optional[BaseModel] = None, timeout: Optional[float] = None) -> Any:
        return await asyncio.to_thread(self.sync.call, task, request, timeout)

    # --- Athena's methods ---

    async def embed(self, text: str) -> EmbeddingResult:
        return await asyncio.to_thread(self.sync.embed, text)

    async def embed_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[EmbeddingResult]:
        return await asyncio.to_thread(self.sync.embed_batch, texts, batch_size)

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
    ) -> ReasoningResult:
        return await asyncio.to_thread(self.sync.reason, prompt, system, max_tokens, temperature, top_p, stop, json_schema, grammar)

    async def compress_prompt(
        self, context: str, instruction: str = "", compression_ratio: float = 0.5, question: str = ""
    ) -> CompressionResult:
        return await asyncio.to_thread(self.sync.compress_prompt, context, instruction, compression_ratio, question)

    async def consolidate(self, events: Sequence[EpisodicEvent | dict], **options: Any) -> list[Pattern]:
        return await asyncio.to_thread(self.sync.consolidate, events, **options)

    async def consolidation(self, events: Sequence[EpisodicEvent | dict], **options: Any) -> ConsolidationResult:
        return await asyncio.to_thread(self.sync.consolidation, events, **options)

    async def consolidate_with_reasoning(
        self, events_text: str, task_description: str = DEFAULT_TASK_DESCRIPTION
    ) -> ReasoningResult:
        return await asyncio.to_thread(self.sync.consolidate_with_reasoning, events_text, task_description)

    # --- re-embedding jobs ---

    async def reembed(self, source: JsonlSource | PostgresSource | dict, **options: Any) -> str:
        return await asyncio.to_thread(self.sync.reembed, source, **options)

    async def resume_job(self, job_id: str) -> str:
        return await asyncio.to_thread(self.sync.resume_job, job_id)

    async def job(self, job_id: str) -> JobState:
        return await asyncio.to_thread(self.sync.job, job_id)

    async def job_errors(self, job_id: str, start: int = 0, stop: int = -1) -> list[ItemError]:
        return await asyncio.to_thread(self.sync.job_errors, job_id, start, stop)

    async def cancel_job(self, job_id: str) -> JobState:
        return await asyncio.to_thread(self.sync.cancel_job, job_id)

    # --- health ---

    async def health(self, timeout: float = 5.0) -> HealthReport:
        return await asyncio.to_thread(self.sync.health, timeout)

    async def check_health(self) -> dict[str, bool]:
        return await asyncio.to_thread(self.sync.check_health)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncAthenaClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()
