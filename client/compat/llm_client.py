"""`athena.core.llm_client`, over the queues: `LocalLLMClient`, `get_llm_client` and their results.

The names, signatures, defaults and result dataclasses are Athena's. What a
call does is the queue's: the embedding and reasoning servers are chosen by
the workers (their LLAMACPP_*_URL settings), so the URLs given here are kept
as attributes and otherwise unused. Failures raise `athena_client.contract.errors`
classes, which are `RuntimeError`s, as Athena's client raised.

Timeouts. `timeout_seconds` is how long an embedding or compression call waits
for its result. A generation (`reason`, `consolidate_with_reasoning`) is timed
in two parts, so that a long answer behind a backlog is not cut off by time it
spent in the queue: it may wait `queue_timeout_seconds` for a reasoning worker
to take it, and then run for `generation_timeout(max_tokens)`, the longer of
`timeout_seconds` and `max_tokens` at `min_tokens_per_second`. A generation no
worker takes in time is cancelled, and the call raises `ServerTimeout` saying so.
An awaitable Athena cancels cancels its generation too (`_generation`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Annotated, Any, Dict, List, Optional

from pydantic import BaseModel, Field, ValidationError

from athena_client.async_client import in_client_thread, in_client_thread_unawaited
from athena_client.compat.connection import shared_client
from athena_client.contract import payloads
from athena_client.contract.consolidation import UNIT_SCORE_SCHEMA, merge_near_duplicates
from athena_client.contract.errors import InvalidInput, ModelOutputInvalid, ServerTimeout
from athena_client.contract.grammar import compact_json_grammar
from athena_client.contract.payloads import EmbedPurpose, ReasonRequest
from athena_client.contract.routes import TaskName
from athena_client.contract.validation import describe, parse

logger = logging.getLogger(__name__)

ATHENA_EMBEDDING_URL = "http://localhost:8001"
ATHENA_REASONING_URL = "http://localhost:8002"
# How long a generation may wait in the reasoning queue for a worker to take it.
# Past it, no worker is free (a backlog) or none is running, and waiting on helps nobody.
QUEUE_TIMEOUT_S = 600.0
# The slowest generation rate a generation is given time for, once a worker has
# taken it: Athena's 2,048 tokens then have 409.6 s. Qwen2.5-7B-Instruct Q4_K_M
# makes 25-30 tokens/s on a GPU; the margin is for a slower or busier host.
# (The worker's own bounds are longer: ATHENA_REASON_TIMEOUT_S, 600 s, and the
# reasoning queue's time limit.)
MIN_TOKENS_PER_S = 5.0
DEFAULT_TASK_DESCRIPTION = "Extract semantic patterns from these episodic events"
CONSOLIDATION_SYSTEM_PROMPT = (
    "You are a consolidation engine for memory systems. "
    "Your role is to extract semantic patterns, relationships, and insights "
    "from episodic events. Be precise and concise. Output structured data."
)


@dataclass
class EmbeddingResult:
    """Result from embedding operation."""

    embedding: List[float]
    dimension: int
    latency_ms: float


@dataclass
class ReasoningResult:
    """Result from reasoning operation."""

    text: str
    tokens: int
    latency_ms: float
    # For `consolidate_with_reasoning`: the whole schema-valid answer
    # (patterns, relationships, insights) that `text` renders.
    answer: Optional[Dict[str, Any]] = None


@dataclass
class CompressionResult:
    """Result from compression operation."""

    compressed_prompt: str
    original_tokens: int
    compressed_tokens: int
    compression_ratio: float
    latency_ms: float


# --- consolidate_with_reasoning: Athena's prompt, held to a schema ---


def consolidation_prompt(task_description: str, events_text: str) -> str:
    """Athena's own prompt, JSON instructions included, word for word."""
    return f"""{task_description}:

{events_text}

Provide output in JSON format:
{{
  "patterns": [
    {{"name": "...", "confidence": 0.0-1.0, "evidence_count": N, "description": "..."}}
  ],
  "relationships": [
    {{"source": "...", "target": "...", "type": "...", "strength": 0.0-1.0}}
  ],
  "insights": ["..."]
}}"""


class AthenaPattern(BaseModel):
    """A pattern with both the keys Athena's JSON spec asks for (name, evidence_count)
    and those its parser reads (description, type, confidence, tags, evidence)."""

    name: str = Field(max_length=40)
    description: str = Field(min_length=1, max_length=140)
    type: str
    confidence: float = Field(ge=0.0, le=1.0)
    evidence_count: int = Field(ge=0, le=99)
    tags: List[Annotated[str, Field(max_length=20)]] = Field(max_length=3)
    evidence: str = Field(max_length=100)


class AthenaRelationship(BaseModel):
    source: str = Field(max_length=40)
    target: str = Field(max_length=40)
    type: str = Field(max_length=20)
    strength: float = Field(ge=0.0, le=1.0)


class AthenaAnswer(BaseModel):
    patterns: List[AthenaPattern] = Field(min_length=1, max_length=3)
    relationships: List[AthenaRelationship] = Field(max_length=2)
    insights: List[Annotated[str, Field(max_length=80)]] = Field(max_length=2)


def _string(max_length: int, min_length: int = 0) -> dict:
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


ANSWER_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "patterns": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": _string(40),
                    "description": _string(140, 1),
                    "type": {"enum": ["pattern", "decision", "workflow", "fact"]},
                    "confidence": UNIT_SCORE_SCHEMA,
                    "evidence_count": {"type": "integer", "minimum": 0, "maximum": 99},
                    "tags": {"type": "array", "items": _string(20), "maxItems": 3},
                    "evidence": _string(100),
                },
                "required": ["name", "description", "type", "confidence", "evidence_count", "tags", "evidence"],
                "additionalProperties": False,
            },
        },
        "relationships": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {"source": _string(40), "target": _string(40), "type": _string(20), "strength": UNIT_SCORE_SCHEMA},
                "required": ["source", "target", "type", "strength"],
                "additionalProperties": False,
            },
        },
        "insights": {"type": "array", "items": _string(80), "maxItems": 2},
    },
    "required": ["patterns", "relationships", "insights"],
    "additionalProperties": False,
}
# Compact JSON, ASCII strings, every length bounded: the longest answer this
# grammar allows is shorter than Athena's 2,048 tokens, so it is never cut off
# (athena_client.contract.grammar says why a token can never be shorter than a character).
ANSWER_GRAMMAR = compact_json_grammar(ANSWER_SCHEMA)


def _join(kept: AthenaPattern, twin: AthenaPattern) -> None:
    kept.confidence = max(kept.confidence, twin.confidence)
    kept.evidence_count = max(kept.evidence_count, twin.evidence_count)
    kept.tags = list(dict.fromkeys([*kept.tags, *twin.tags]))


def render_for_athena(answer: AthenaAnswer) -> str:
    """The patterns, near-duplicates merged, as a fenced JSON array: the block Athena's pattern parser reads."""
    patterns = merge_near_duplicates(answer.patterns, join=_join)
    body = json.dumps([p.model_dump() for p in patterns], indent=2, ensure_ascii=False)
    return f"```json\n{body}\n```"


# --- the client ---


class LocalLLMClient:
    """Athena's unified client for embedding, reasoning and prompt compression."""

    def __init__(
        self,
        embedding_url: str = ATHENA_EMBEDDING_URL,
        reasoning_url: str = ATHENA_REASONING_URL,
        enable_compression: bool = True,
        timeout_seconds: float = 60.0,
        *,
        queue_timeout_seconds: float = QUEUE_TIMEOUT_S,
        min_tokens_per_second: float = MIN_TOKENS_PER_S,
    ):
        if not (timeout_seconds > 0 and queue_timeout_seconds > 0 and min_tokens_per_second > 0):
            raise InvalidInput(
                f"timeout_seconds ({timeout_seconds}), queue_timeout_seconds ({queue_timeout_seconds}) "
                f"and min_tokens_per_second ({min_tokens_per_second}) must be positive"
            )
        self.embedding_url = embedding_url
        self.reasoning_url = reasoning_url
        self.enable_compression = enable_compression
        self.timeout_seconds = timeout_seconds
        self.queue_timeout_seconds = queue_timeout_seconds
        self.min_tokens_per_second = min_tokens_per_second
        if (embedding_url, reasoning_url) != (ATHENA_EMBEDDING_URL, ATHENA_REASONING_URL):
            logger.debug(
                "LocalLLMClient URLs are not used: the workers choose the servers (LLAMACPP_EMBEDDINGS_URL and "
                "LLAMACPP_REASONING_URL on the workers); this client reaches them through ATHENA_BROKER_URL"
            )
        self._client = shared_client(timeout_seconds)

    async def check_health(self) -> Dict[str, bool]:
        health = await in_client_thread(self._client.check_health)
        if not self.enable_compression:
            health["compression"] = False
        return health

    async def embed(self, text: str, purpose: EmbedPurpose = "document") -> EmbeddingResult:
        """`text`'s vector, as a memory to store unless `purpose="query"` (a text to
        search with): the workers add the prefix the model was trained with for it."""
        started = time.perf_counter()
        out = await in_client_thread(functools.partial(self._client.embed, text, purpose=purpose))
        return EmbeddingResult(out.embedding, out.dimension, (time.perf_counter() - started) * 1000)

    async def embed_batch(self, texts: List[str], batch_size: int = 32, purpose: EmbedPurpose = "document") -> List[EmbeddingResult]:
        started = time.perf_counter()
        out = await in_client_thread(functools.partial(self._client.embed_batch, list(texts), batch_size, purpose=purpose))
        latency_ms = (time.perf_counter() - started) * 1000
        return [EmbeddingResult(r.embedding, r.dimension, latency_ms) for r in out]

    async def reason(
        self,
        prompt: str,
        system: Optional[str] = None,
        max_tokens: int = 2048,
        temperature: float = 0.7,
        top_p: float = 0.9,
    ) -> ReasoningResult:
        started = time.perf_counter()
        fields = dict(prompt=prompt, system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        out = await self._generation(parse(ReasonRequest, fields))
        return ReasoningResult(out.text, out.tokens, (time.perf_counter() - started) * 1000)

    async def compress_prompt(self, context: str, instruction: str, compression_ratio: float = 0.5) -> CompressionResult:
        if not self.enable_compression:
            # As Athena's client did with compression off: the context back, whole.
            words = len(context.split())
            return CompressionResult(context, words, words, 1.0, 0.0)
        started = time.perf_counter()
        out = await in_client_thread(self._client.compress_prompt, context, instruction, compression_ratio)
        return CompressionResult(
            out.compressed_prompt, out.original_tokens, out.compressed_tokens, out.ratio, (time.perf_counter() - started) * 1000
        )

    async def consolidate_with_reasoning(
        self,
        events_text: str,
        task_description: str = DEFAULT_TASK_DESCRIPTION,
    ) -> ReasoningResult:
        """Athena's consolidation prompt, answered as schema-valid JSON every time.

        `text` is a fenced JSON array of patterns (the block Athena's parser
        reads); `answer` holds the whole object, relationships and insights too.
        """
        started = time.perf_counter()
        fields = dict(
            prompt=consolidation_prompt(task_description, events_text),
            system=CONSOLIDATION_SYSTEM_PROMPT,
            max_tokens=2048,
            temperature=0.5,
            top_p=0.9,
            grammar=ANSWER_GRAMMAR,
        )
        out = await self._generation(parse(ReasonRequest, fields))
        try:
            answer = AthenaAnswer.model_validate_json(out.text)
        except ValidationError as exc:
            cut = "; the answer was cut at max_tokens" if out.finish_reason == "length" else ""
            raise ModelOutputInvalid(f"the consolidation answer is not valid ({describe(exc)}{cut}); raw answer: {out.text}") from None
        latency_ms = (time.perf_counter() - started) * 1000
        return ReasoningResult(render_for_athena(answer), out.tokens, latency_ms, answer.model_dump())

    # --- generations: the queue's wait and the model's time, bounded apart ---

    def generation_timeout(self, max_tokens: int) -> float:
        """Seconds a generation of up to `max_tokens` may run once a worker has taken it."""
        return max(self.timeout_seconds, max_tokens / self.min_tokens_per_second)

    async def _generation(self, request: ReasonRequest) -> payloads.ReasoningResult:
        """`_generate` awaited. An awaitable Athena cancels (`asyncio.Task.cancel`,
        `wait_for` timing out) cancels its task too: queued, it never runs;
        running, its generation stops at the server, and the slot goes to the next."""
        task_id = self._client.transport.waiter.task_id()
        try:
            return await in_client_thread(self._generate, request, task_id)
        except asyncio.CancelledError:
            in_client_thread_unawaited(self._cancel_quietly, task_id)
            raise

    def _cancel_quietly(self, task_id: str) -> None:
        try:
            self._client.canceller.cancel_sent(task_id)
        except Exception as exc:  # noqa: BLE001 - Athena's own cancellation goes on regardless
            logger.warning("could not cancel %s %s: %s: %s", TaskName.REASON.value, task_id, exc.__class__.__name__, exc)

    def _generate(self, request: ReasonRequest, task_id: str) -> payloads.ReasoningResult:
        """`request` on the reasoning queue under `task_id`: up to `queue_timeout_seconds`
        for a worker to take it (the task stores a STARTED state then), then up to
        `generation_timeout` for its answer. Blocking; runs in a client thread."""
        client = self._client
        waiter = client.transport.waiter
        ticket = waiter.expect(task_id, not_sent_yet=True)
        try:
            client.transport.submit(TaskName.REASON, request, task_id=task_id)
        except BaseException:
            waiter.release(ticket)
            raise
        try:
            if not waiter.wait_started(ticket, self.queue_timeout_seconds):
                self._cancel_quietly(task_id)
                raise ServerTimeout(
                    f"{TaskName.REASON.value} {task_id} waited {self.queue_timeout_seconds:g} s in the reasoning queue "
                    "and no worker took it, so it was revoked: the reasoning workers are all busy or none is running "
                    "(athena-inference health --queue reasoning)"
                )
            budget = self.generation_timeout(request.max_tokens)
            try:
                return client.result(TaskName.REASON, task_id, budget)
            except ServerTimeout:
                if ticket.done.is_set():
                    raise  # the task's own error
                raise ServerTimeout(
                    f"{TaskName.REASON.value} {task_id} started but gave no answer within {budget:g} s "
                    f"(max_tokens {request.max_tokens} at {self.min_tokens_per_second:g} tokens/s, "
                    f"or timeout_seconds {self.timeout_seconds:g} if longer)"
                ) from None
        finally:
            waiter.release(ticket)


def get_llm_client(
    embedding_url: Optional[str] = None,
    reasoning_url: Optional[str] = None,
    enable_compression: bool = True,
) -> LocalLLMClient:
    """Athena's factory: URLs default to its LLAMACPP_* settings, which the workers now read instead."""
    return LocalLLMClient(
        embedding_url=embedding_url or os.environ.get("LLAMACPP_EMBEDDINGS_URL", ATHENA_EMBEDDING_URL),
        reasoning_url=reasoning_url or os.environ.get("LLAMACPP_REASONING_URL", ATHENA_REASONING_URL),
        enable_compression=enable_compression,
    )
