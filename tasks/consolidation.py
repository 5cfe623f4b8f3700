"""The `consolidation` queue: a cluster of events becomes validated semantic patterns.

`athena.consolidate` prepares the job (validates, fits the events into the
model's context) and then replaces itself with a chain of stages, each a task
on its own queue: compression (optional), reasoning, embedding (optional). No
worker waits for another worker's result, and the caller's task id ends with
the chain's result.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from celery import Task, chain
from pydantic import BaseModel

from athena_client.consolidation import ConsolidateRequest, ConsolidationResult, Pattern, StageTiming
from athena_client.errors import InvalidInput, ModelOutputInvalid
from athena_client.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.config.settings import get_settings
from athena_inference.tasks import resources
from athena_inference.tasks.base import validate
from athena_inference.workers import consolidation_prompt as prompt

COMPRESSION_RATE = 0.5
log = logging.getLogger(__name__)


class JobState(BaseModel):
    """What one stage hands the next."""

    options: dict
    event_ids: list[str]
    event_text: str
    dropped_event_ids: list[str]
    compressed: bool = False
    repaired: bool = False
    model: str = ""
    patterns: list[Pattern] = []
    stages: list[StageTiming] = []
    remaining: list[str]
    started_at: float
    handed_over_at: float

    def begin(self) -> tuple[float, float]:
        """(now, how long this stage's message waited since the last stage handed it over, in ms)."""
        now = time.time()
        return now, max(0.0, (now - self.handed_over_at) * 1000)

    def done(self, stage: str, queue: Queue, begun: float, wait_ms: Optional[float]) -> dict:
        self.stages.append(StageTiming(stage=stage, queue=queue.value, queue_wait_ms=wait_ms, run_ms=(time.time() - begun) * 1000))
        self.handed_over_at = time.time()
        self.remaining = self.remaining[1:]
        if self.remaining:
            return self.model_dump(mode="json")
        total_ms = (self.handed_over_at - self.started_at) * 1000
        _record(ok=True, latency_ms=total_ms)
        return ConsolidationResult(
            patterns=self.patterns,
            dropped_event_ids=self.dropped_event_ids,
            repaired=self.repaired,
            compressed=self.compressed,
            model=self.model,
            stages=self.stages,
            total_ms=total_ms,
        ).model_dump(mode="json")


def _record(*, ok: bool, latency_ms: float) -> None:
    # Whole jobs, under the entry task's name; a lost metric never fails the job.
    try:
        resources.metrics().record(TaskName.CONSOLIDATE.value, ok=ok, latency_ms=latency_ms)
    except Exception:  # noqa: BLE001
        log.warning("could not record consolidation metrics", exc_info=True)


@app.task(name=TaskName.CONSOLIDATE.value, bind=True)
def consolidate(self: Task, **payload) -> dict:
    """Validate the cluster, fit it to the model's context, and hand it to the stages."""
    started = time.time()
    request = validate(ConsolidateRequest, payload)
    options = request.options
    settings = get_settings()
    budget = settings.reasoning_ctx - prompt.PROMPT_OVERHEAD_TOKENS - prompt.max_output_tokens(options.max_patterns)
    reasoning = resources.llama(Queue.REASONING)
    kept, dropped = prompt.fit_events(list(request.events), budget, lambda text: len(reasoning.tokenize(text)))
    if not kept:
        raise InvalidInput(f"no event fits the reasoning model's context ({budget} tokens for events)")
    stages = ([TaskName.CONSOLIDATE_COMPRESS.value] if options.compress else []) + [TaskName.CONSOLIDATE_REASON.value]
    if options.embed_patterns:
        stages.append(TaskName.CONSOLIDATE_EMBED.value)
    state = JobState(
        options=options.model_dump(),
        event_ids=[e.id for e in kept],
        event_text="\n".join(prompt.render_event(e) for e in kept),
        dropped_event_ids=dropped,
        remaining=stages,
        started_at=started,
        handed_over_at=started,
    )
    state.stages.append(
        StageTiming(stage="prepare", queue=Queue.CONSOLIDATION.value, queue_wait_ms=None, run_ms=(time.time() - started) * 1000)
    )
    state.handed_over_at = time.time()
    signatures = [app.signature(stages[0], args=(state.model_dump(mode="json"),))]
    signatures += [app.signature(name) for name in stages[1:]]
    return self.replace(chain(*signatures))


@app.task(name=TaskName.CONSOLIDATE_COMPRESS.value)
def compress_stage(state: dict) -> dict:
    job = JobState.model_validate(state)
    begun, wait = job.begin()
    compressor = resources.compressor()
    if compressor.status.ready:
        # Event ids must survive, or the patterns could not cite them.
        out = compressor.compress(job.event_text, rate=COMPRESSION_RATE, force_tokens=[f"[{i}]" for i in job.event_ids])
        job.event_text, job.compressed = out.prompt, True
    return job.done("compression", Queue.COMPRESSION, begun, wait)


@app.task(name=TaskName.CONSOLIDATE_REASON.value)
def reason_stage(state: dict) -> dict:
    job = JobState.model_validate(state)
    begun, wait = job.begin()
    max_patterns = job.options["max_patterns"]
    server = resources.llama(Queue.REASONING)
    ask = dict(
        max_tokens=prompt.max_output_tokens(max_patterns),
        temperature=job.options["temperature"],
        top_p=0.9,
        stop=[],
        response_format=prompt.response_format(job.event_ids, max_patterns),
    )
    out = server.chat(prompt.messages(job.event_text, max_patterns), **ask)
    job.model = out.model
    try:
        job.patterns = prompt.parse_patterns(out.text, job.event_ids)
    except ValueError as first:
        if out.finish_reason == "length":
            first = ValueError(f"{first}; the answer was cut at max_tokens")
        job.repaired = True
        retry = server.chat(prompt.repair_messages(job.event_text, max_patterns, out.text, str(first)), **ask)
        try:
            job.patterns = prompt.parse_patterns(retry.text, job.event_ids)
        except ValueError as second:
            _record(ok=False, latency_ms=(time.time() - job.started_at) * 1000)
            raise ModelOutputInvalid(
                f"patterns failed validation twice ({first}; after repair: {second}); raw answer: {retry.text}"
            ) from None
    return job.done("reasoning", Queue.REASONING, begun, wait)


@app.task(name=TaskName.CONSOLIDATE_EMBED.value)
def embed_stage(state: dict) -> dict:
    job = JobState.model_validate(state)
    begun, wait = job.begin()
    out = resources.llama(Queue.EMBEDDINGS).embed([p.description for p in job.patterns])
    for pattern, vector in zip(job.patterns, out.vectors, strict=True):
        pattern.embedding = vector
    return job.done("embedding", Queue.EMBEDDINGS, begun, wait)

