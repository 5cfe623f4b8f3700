"""The `consolidation` queue's task and the stages it hands a job through.

`athena.consolidate` prepares the job (validates, fits the events into the
model's context) and replaces itself with its first stage; each stage does its
part on its own queue (compression, reasoning, embedding) and replaces itself
with the next. A replacement keeps the task id, so the caller's id ends with
the last stage's `ConsolidationResult`, and no worker ever waits for another.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal, Optional

from celery import Task
from pydantic import BaseModel, ConfigDict, Field

from athena_client.contract.consolidation import (
    CompressionGate,
    ConsolidateOptions,
    ConsolidateRequest,
    ConsolidationResult,
    Pattern,
    StageTiming,
)
from athena_client.contract.errors import InvalidInput
from athena_client.contract.limits import capped
from athena_client.contract.payloads import NonBlankText, ShortText, VectorOrigin
from athena_client.contract.routes import TASK_QUEUES, Queue, TaskName
from athena_client.contract.vectors import WIRE
from athena_inference.config.celery import app
from athena_inference.config.settings import get_settings
from athena_inference.tasks import compression_gate, seams
from athena_inference.tasks.base import AthenaTask, running_clock
from athena_inference.tasks.consolidation import prompt
from athena_inference.tasks.consolidation.answer import extract_patterns
from athena_inference.tasks.generation import TaskGeneration

COMPRESSION_RATE = 0.5
Stage = Literal["prepare", "compression", "reasoning", "embedding"]


EventIds = Annotated[list[Annotated[ShortText, Field(min_length=1)]], capped("events")]


class ConsolidationState(BaseModel):
    """What one stage hands the next: the job so far, and the stages still to run.

    It arrives over the broker like any payload, so it is held to the same caps.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    options: ConsolidateOptions
    event_ids: Annotated[EventIds, Field(min_length=1)]
    event_text: Annotated[NonBlankText, capped("context_chars")]
    dropped_event_ids: EventIds
    compressed: bool = False
    compression_ratio: Optional[float] = Field(default=None, ge=0)
    repaired: bool = False
    model: ShortText = ""
    patterns: list[Pattern] = Field(default_factory=list, max_length=20)
    embedding_origin: Optional[VectorOrigin] = None
    stages: list[StageTiming] = Field(default_factory=list, max_length=8)
    remaining: list[TaskName] = Field(max_length=3)
    # When the job began (epoch seconds), for its end-to-end time.
    started_at: float = Field(gt=0)


def hand_on(task: Task, state: ConsolidationState, stage: Stage, gate: Optional[CompressionGate] = None) -> ConsolidationResult:
    """Record this stage's timing, then replace the task with the next stage, or end the job."""
    clock = running_clock()
    timing = StageTiming(
        stage=stage, queue=TASK_QUEUES[TaskName(task.name)].value, queue_wait_ms=clock.queue_wait_ms, run_ms=clock.elapsed_ms(),
        compression_gate=gate,
    )
    state = state.model_copy(update={"stages": [*state.stages, timing]})
    if state.remaining:
        following = state.model_copy(update={"remaining": state.remaining[1:]})
        # Raises Ignore: this task ends here, and its id lives on in the next stage.
        task.replace(app.signature(state.remaining[0].value, kwargs=following.model_dump(mode="json", context=WIRE)))
    return ConsolidationResult(
        patterns=state.patterns,
        dropped_event_ids=state.dropped_event_ids,
        repaired=state.repaired,
        compressed=state.compressed,
        compression_ratio=state.compression_ratio,
        model=state.model,
        embedding_origin=state.embedding_origin,
        stages=state.stages,
        total_ms=(time.time() - state.started_at) * 1000,
    )


@app.task(name=TaskName.CONSOLIDATE.value, base=AthenaTask, bind=True, job_kind=TaskName.CONSOLIDATE)
def consolidate(self: Task, request: ConsolidateRequest) -> ConsolidationResult:
    """Validate the cluster, fit it to the model's context, and hand it to the stages."""
    options = request.options
    budget = get_settings().reasoning_ctx - prompt.PROMPT_OVERHEAD_TOKENS - prompt.max_output_tokens(options.max_patterns)
    reasoning = seams.llama(Queue.REASONING)
    kept, dropped = prompt.fit_events(list(request.events), budget, lambda text: len(reasoning.tokenize(text)))
    if not kept:
        raise InvalidInput(f"no event fits the reasoning model's context ({budget} tokens for events)")
    event_text = "\n".join(prompt.render_event(e) for e in kept)
    gate = compression_gate.decide(
        options.compress,
        event_chars=len(event_text),
        event_tokens=len(reasoning.tokenize(event_text)) if options.compress is not False else 0,
        rate=COMPRESSION_RATE,
        metrics=seams.metrics(),
    )
    stages = [TaskName.CONSOLIDATE_COMPRESS] if gate.compress else []
    stages.append(TaskName.CONSOLIDATE_REASON)
    if options.embed_patterns:
        stages.append(TaskName.CONSOLIDATE_EMBED)
    state = ConsolidationState(
        options=options,
        event_ids=[e.id for e in kept],
        event_text=event_text,
        dropped_event_ids=dropped,
        remaining=stages,
        started_at=running_clock().started_at,
    )
    return hand_on(self, state, "prepare", gate)


@app.task(name=TaskName.CONSOLIDATE_COMPRESS.value, base=AthenaTask, bind=True, job_kind=TaskName.CONSOLIDATE)
def compress_stage(self: Task, state: ConsolidationState) -> ConsolidationResult:
    """Shrink the events' text; each event's [id] is kept whole, or the patterns could not cite it."""
    compressor = seams.compressor()
    if compressor.status.ready:
        started = time.perf_counter()
        out = compressor.compress(state.event_text, rate=COMPRESSION_RATE, force_tokens=[f"[{i}]" for i in state.event_ids])
        compression_gate.note_compressor_run(seams.metrics(), self.name, len(state.event_text), (time.perf_counter() - started) * 1000)
        ratio = out.compressed_tokens / max(out.original_tokens, 1)
        state = state.model_copy(update={"event_text": out.prompt, "compressed": True, "compression_ratio": ratio})
    return hand_on(self, state, "compression")


@app.task(name=TaskName.CONSOLIDATE_REASON.value, base=AthenaTask, bind=True, job_kind=TaskName.CONSOLIDATE)
def reason_stage(self: Task, state: ConsolidationState) -> ConsolidationResult:
    """Patterns from the reasoning model, schema-constrained and validated (one repair at most)."""
    found = extract_patterns(TaskGeneration(seams.llama(Queue.REASONING)), state.event_text, state.event_ids, state.options)
    compression_gate.note_prompt(seams.metrics(), self.name, found.timing)
    state = state.model_copy(update={"patterns": found.patterns, "model": found.model, "repaired": found.repaired})
    return hand_on(self, state, "reasoning")


@app.task(name=TaskName.CONSOLIDATE_EMBED.value, base=AthenaTask, bind=True, job_kind=TaskName.CONSOLIDATE)
def embed_stage(self: Task, state: ConsolidationState) -> ConsolidationResult:
    """Each pattern's description embedded as a document to store (a long one
    in windows, so that its vector stands for all of it), in one request."""
    if state.patterns:
        out = seams.embedder(Queue.EMBEDDINGS).embed([p.description for p in state.patterns], purpose="document", long_text="chunk")
        patterns = [p.model_copy(update={"embedding": v}) for p, v in zip(state.patterns, out.vectors, strict=True)]
        state = state.model_copy(update={"patterns": patterns, "embedding_origin": out.origin})
    return hand_on(self, state, "embedding")
