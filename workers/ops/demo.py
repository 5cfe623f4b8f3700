"""The demo `up` runs once the stack is up: one short job through every queue, printed with its timing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from athena_client.contract.errors import ConfigurationError
from athena_client.contract.jobs import JobStatus, JsonlSource
from athena_client.contract.payloads import CompressRequest, EmbedBatchRequest, EmbedRequest, ReasonRequest, TaskTiming
from athena_client.contract.routes import ROUTES, SERVER_HEALTH, Queue, TaskName
from athena_client.sender import TaskSender
from athena_inference.workers.ops.sample_payloads import request_models, valid_payloads
from athena_inference.workers.reembedding.runner import iter_progress


def describe(timing: TaskTiming) -> str:
    server = timing.server
    parts = [
        f"queue wait {timing.queue_wait_ms:.1f} ms" if timing.queue_wait_ms is not None else "queue wait n/a",
        f"run {timing.run_ms:.1f} ms",
    ]
    if server is None:
        return f"model {timing.model}; " + ", ".join(parts)
    parts += [
        f"server {server.request_ms:.1f} ms",
        f"prompt {server.prompt_tokens} tok" + (f" in {server.prompt_ms:.1f} ms" if server.prompt_ms else ""),
    ]
    if server.generated_tokens:
        parts.append(f"generated {server.generated_tokens} tok in {server.generated_ms or 0:.1f} ms")
    if server.tokens_per_second:
        parts.append(f"{server.tokens_per_second:.1f} tok/s")
    return f"model {timing.model}; " + ", ".join(parts)


DEMO_MEMORY = (
    "On Monday the payments team found that the nightly reconciliation job had failed silently for three days. "
    "The bank had rotated its SFTP host key on Friday, the client refused to connect, and the job logged the "
    "exception at debug level, so nobody saw it. Maria noticed that its run time had dropped from twelve minutes "
    "to four seconds. The team decided that batch jobs must fail loudly, pin host keys in configuration, and "
    "report their processed row count to the metrics store so that a drop to zero shows on the dashboard."
)


DEMO_EVENTS = [
    {"id": "e1", "timestamp": "2026-11-02T09:14:00Z", "event_type": "incident",
     "content": "The nightly reconciliation job failed silently for three days.", "tags": ["batch"]},
    {"id": "e2", "timestamp": "2026-11-02T11:40:00Z", "event_type": "decision",
     "content": "Every batch job must exit non-zero on any exception and page on-call.", "tags": ["batch"]},
    {"id": "e3", "timestamp": "2026-11-05T09:45:00Z", "event_type": "decision",
     "content": "Batch jobs report their processed row count so a drop to zero shows on the dashboard.", "tags": ["metrics"]},
]


def demo(sender: TaskSender, timeout: float = 300) -> None:
    """One short job through every queue that has tasks, printed with its timing."""
    jobs = [
        (TaskName.EMBED, EmbedRequest(text="Athena remembers what matters.")),
        (TaskName.EMBED_BATCH, EmbedBatchRequest(texts=["The deploy failed at 3am.", "We rolled back to v2.3."])),
        (TaskName.REASON, ReasonRequest(prompt="In one sentence: why keep a backlog in a queue?", max_tokens=48, temperature=0.2)),
        (TaskName.COMPRESS_PROMPT, CompressRequest(context=DEMO_MEMORY, instruction="Summarise the incident.", rate=0.5)),
    ]
    pending = [(task, sender.send(task, request)) for task, request in jobs]
    for task, result in pending:
        out = sender.wait(task, result, timeout)
        if task is TaskName.EMBED:
            summary = f"{out.dimension}-d vector ({out.profile} profile, as a {out.purpose}), first values {[round(v, 4) for v in out.embedding[:3]]}"
        elif task is TaskName.EMBED_BATCH:
            summary = f"{len(out.embeddings)} vectors of {out.dimension} dimensions"
        elif task is TaskName.REASON:
            summary = repr(out.text.strip()[:200])
        elif out.compressed:
            summary = (f"{out.original_tokens} -> {out.compressed_tokens} tokens ({out.ratio:.0%} kept, {out.method}), "
                       f"{out.compressed_prompt[:120]!r}...")
        else:
            summary = f"not compressed: {out.reason}"
        print(f"\n{task.value} on '{out.timing.queue}': {summary}\n    {describe(out.timing)}", flush=True)
    demo_other_lanes(sender, timeout)
    consolidated = sender.consolidation(DEMO_EVENTS, max_patterns=2)
    stages = ", ".join(f"{s.stage} on {s.queue} {s.run_ms:.0f} ms" for s in consolidated.stages)
    print(f"\n{TaskName.CONSOLIDATE.value}: {len(DEMO_EVENTS)} events -> {len(consolidated.patterns)} patterns", flush=True)
    for pattern in consolidated.patterns:
        print(f"    {pattern.type} ({pattern.confidence:.2f}, from {', '.join(pattern.source_events)}): {pattern.description[:100]}")
    print(f"    {stages}; end to end {consolidated.total_ms:.0f} ms", flush=True)
    gate = consolidated.stages[0].compression_gate
    if gate is not None:
        print(f"    compression gate: {'compressed' if gate.compress else 'not compressed'}, {gate.reason}", flush=True)


# The queues the demo sends its own jobs to (the bulk lane through the re-embedding job).
DEMOED = {Queue.EMBEDDINGS, Queue.REASONING, Queue.COMPRESSION, Queue.CONSOLIDATION, Queue.EMBEDDINGS_BULK, Queue.JOBS}


def demo_other_lanes(sender: TaskSender, timeout: float) -> None:
    """Every other lane's tasks, each with its request model's example payload, printed as they come back."""
    samples, models = valid_payloads(), request_models()
    for task, route in ROUTES.items():
        if route.queue in DEMOED or route.result is None or task in SERVER_HEALTH.values():
            continue
        out = sender.wait(task, sender.send(task, models[task].model_validate(samples[task])), timeout)
        print(f"\n{task.value} on '{route.queue.value}': {out.model_dump_json(exclude={'timing'})[:200]}\n    {describe(out.timing)}", flush=True)


def demo_reembed(sender: TaskSender, workdir: Path, timeout: float = 120) -> None:
    """A three-memory store re-embedded by the jobs worker through the bulk lane."""
    workdir.mkdir(parents=True, exist_ok=True)
    source, output = workdir / "memories.jsonl", workdir / "vectors.npy"
    source.write_text("".join(json.dumps({"id": i, "content": e["content"]}) + "\n" for i, e in enumerate(DEMO_EVENTS)))
    job_id = sender.reembed(JsonlSource(path=str(source), output=str(output)))
    deadline = time.monotonic() + timeout
    for state in iter_progress(sender.jobs, job_id, interval_s=0.2):
        if not state.status.terminal and time.monotonic() > deadline:
            raise ConfigurationError(f"re-embedding job {job_id} did not finish in {timeout:.0f} s")
    if state.status is not JobStatus.COMPLETED:
        raise ConfigurationError(f"re-embedding job {job_id} ended {state.status.value}: {state.error}")
    seconds = (state.finished_at - state.started_at).total_seconds()
    print(
        f"\n{TaskName.REEMBED.value} on 'jobs': {state.counts.total} memories -> {output} "
        f"({state.counts.completed} embedded, {state.counts.skipped} unchanged since the last run; "
        f"{state.model} on the bulk lane, {seconds * 1000:.0f} ms)",
        flush=True,
    )
