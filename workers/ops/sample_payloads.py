"""Payloads the test suite and the benches send: one incident, as a memory and as
episodic events, and malformed payloads for every task.

The incident is the text the compression and consolidation figures in
docs/performance.md were measured on; keep it as it is, or measure again.

Each malformed payload starts from a valid payload of its task and breaks it one
way: positional junk, an unknown key, a missing or mistyped field, blank,
NUL-only or huge text, a lone UTF-16 surrogate, NaN, an empty or oversized list,
mixed time zones. Every one must be answered with InvalidInput (or
InputTooLong), never a raw Python exception: the unit tests try them all on
every task, tests/tasks/test_malformed_payloads.py sends a sample through real
workers, and bench/faults.py sends more.
"""

from __future__ import annotations

import random
import time
from typing import Any, Iterator

from athena_client.contract.consolidation import EpisodicEvent
from athena_client.contract.routes import TaskName

# About 360 cl100k tokens of an incident, as a memory to compress.
INCIDENT_MEMORY = """On Monday the payments team noticed that the nightly reconciliation job had been failing silently for three days.
The job reads settlement files from the bank's SFTP server, matches each line against the ledger in PostgreSQL, and
writes mismatches to a review queue. Since the bank rotated its host key on Friday, the SFTP client refused to connect,
and because the job caught every exception and logged it at debug level, nobody saw an error. Maria traced the problem
by comparing the job's run times, which had dropped from twelve minutes to four seconds, a sign that it did no work.
The team agreed on three changes. First, the job now fails loudly: any exception ends the run with a non-zero exit code,
and the scheduler pages the on-call engineer. Second, host keys are pinned in configuration and a rotation is announced
in the team channel a week ahead. Third, a freshness check alerts when no settlement file has been processed for
twenty-six hours. Dev wrote a backfill script that replayed the three missing days in order; it found 214 mismatches,
all of them refunds issued on Saturday that the bank settled on Monday. Finance reviewed them on Tuesday and closed
the incident. In the retrospective the team noted that silent failure was the real defect, not the key rotation, and
decided that every batch job must report its processed row count to the metrics store, so that a drop to zero is visible
on the dashboard. The same review found two other jobs that swallowed exceptions: the invoice exporter and the
currency-rate importer. Both now follow the new rule. Maria will present the incident at the Thursday engineering
meeting, and Dev will add a section on batch job hygiene to the onboarding guide before the end of the month."""

# The same incident as eight episodic events, a cluster to consolidate.
INCIDENT_EVENTS = [
    EpisodicEvent(id="e1", timestamp="2026-11-02T09:14:00Z", event_type="incident", content="The nightly reconciliation job failed silently for three days after the bank rotated its SFTP host key.", tags=["payments", "batch"]),
    EpisodicEvent(id="e2", timestamp="2026-11-02T11:40:00Z", event_type="decision", content="Team decided that every batch job must exit non-zero on any exception and page the on-call engineer.", tags=["batch", "alerting"]),
    EpisodicEvent(id="e3", timestamp="2026-11-03T10:05:00Z", event_type="decision", content="Host keys are now pinned in configuration; key rotations are announced a week ahead.", tags=["security"]),
    EpisodicEvent(id="e4", timestamp="2026-11-04T15:30:00Z", event_type="task", content="Dev wrote a backfill script that replayed three missing days in order and found 214 mismatches.", tags=["payments"]),
    EpisodicEvent(id="e5", timestamp="2026-11-05T09:00:00Z", event_type="review", content="Retrospective: silent failure was the real defect, not the key rotation.", tags=["retro"]),
    EpisodicEvent(id="e6", timestamp="2026-11-05T09:45:00Z", event_type="decision", content="Every batch job reports its processed row count to the metrics store so a drop to zero shows on the dashboard.", tags=["batch", "metrics"]),
    EpisodicEvent(id="e7", timestamp="2026-11-06T14:10:00Z", event_type="task", content="The invoice exporter and currency-rate importer were changed to stop swallowing exceptions.", tags=["batch"]),
    EpisodicEvent(id="e8", timestamp="2026-11-07T16:00:00Z", event_type="workflow", content="On-call checks the batch dashboard every morning before standup and files issues for jobs with zero rows.", tags=["on-call", "batch"]),
]

# Malformed payloads, each from one of these valid ones.
EVENT = {"id": "e1", "timestamp": "2026-11-02T09:14:00Z", "event_type": "decision", "content": "Batch jobs fail loudly.", "tags": ["batch"]}
STATE = {
    "options": {"compress": False, "max_patterns": 2, "temperature": 0.2, "embed_patterns": False},
    "event_ids": ["e1"], "event_text": "[e1] decision: Batch jobs fail loudly.", "dropped_event_ids": [],
    "remaining": [], "started_at": 1_790_000_000.0,
}
VALID: dict[TaskName, dict[str, Any]] = {
    TaskName.EMBED: {"text": "a memory"},
    TaskName.EMBED_BATCH: {"texts": ["one memory", "another"]},
    TaskName.EMBED_BULK: {"texts": ["one memory"]},
    TaskName.REEMBED: {"job_id": "0123456789abcdef"},
    TaskName.REASON: {"prompt": "Why keep a backlog in a queue?", "max_tokens": 8},
    TaskName.COMPRESS_PROMPT: {"context": "A context worth compressing.", "rate": 0.5},
    TaskName.COMPRESSOR_STATUS: {},
    TaskName.CONSOLIDATE: {"events": [EVENT], "options": {"max_patterns": 2}},
    TaskName.CONSOLIDATE_COMPRESS: STATE,
    TaskName.CONSOLIDATE_REASON: STATE,
    TaskName.CONSOLIDATE_EMBED: STATE,
}
BAD_TEXTS = ["", "   \n\t", "\x00", "\x00\x01\x02", "\ud800", "ok \udfff", "x" * 1_000_001]
BAD_VALUES = [None, 7, -1, 2.5, float("nan"), float("inf"), True, [], {}, ["nested", ["junk"]], {"a": {"b": 1}}, "text"]


def _mutations(task: TaskName, payload: dict[str, Any], rng: random.Random) -> Iterator[tuple[tuple, dict[str, Any], str]]:
    yield ("junk", 42), {}, "positional arguments"
    yield (payload,), {}, "the payload as a positional argument"
    yield (), {**payload, "colour": "blue"}, "an unknown key"
    yield (), {**payload, "x" * 300: 1}, "an unknown key 300 characters long"
    for field, value in payload.items():
        rest = {k: v for k, v in payload.items() if k != field}
        yield (), rest, f"no {field}"
        for bad in BAD_VALUES:
            if type(bad) is not type(value) or (isinstance(bad, float) and bad != bad):
                yield (), {**payload, field: bad}, f"{field} = {bad!r}"[:80]
        # Text must be visible, bounded Unicode; a mutation a field takes (a short id with a space) is dropped below.
        if isinstance(value, str):
            for bad in BAD_TEXTS:
                yield (), {**payload, field: bad}, f"{field} = {bad[:12]!r} ({len(bad)} chars)"
        if isinstance(value, list):
            yield (), {**payload, field: [] if value else [None]}, f"{field} emptied or holding None"
            yield (), {**payload, field: [value[0] if value else "x"] * 10_000}, f"{field} with 10,000 items"
            yield (), {**payload, field: [rng.choice(BAD_TEXTS[:6]) for _ in range(3)]}, f"{field} of bad texts"
    if task is TaskName.CONSOLIDATE:
        naive = {**EVENT, "id": "e2", "timestamp": "2026-11-02T10:00:00"}
        yield (), {**payload, "events": [EVENT, naive]}, "time zones mixed"
        yield (), {**payload, "events": [EVENT, EVENT]}, "repeated ids"
        yield (), {**payload, "events": [{**EVENT, "content": "\x00"}]}, "NUL-only content"
        yield (), {**payload, "events": [{**EVENT, "timestamp": "not a time"}]}, "a timestamp that is no time"
        yield (), {**payload, "options": {"temperature": float("nan")}}, "NaN temperature"
    if task is TaskName.REASON:
        yield (), {**payload, "temperature": float("nan")}, "NaN temperature"
        yield (), {**payload, "json_schema": {"type": "object"}, "grammar": "root ::= \"x\""}, "schema and grammar"
        yield (), {**payload, "stop": ["\ud800"]}, "a surrogate stop string"
    if task in (TaskName.CONSOLIDATE_REASON, TaskName.CONSOLIDATE_EMBED, TaskName.CONSOLIDATE_COMPRESS):
        yield (), {**payload, "started_at": float("nan")}, "NaN start time"
        yield (), {**payload, "remaining": ["athena.nothing"]}, "an unknown next stage"


def request_models() -> dict[TaskName, type]:
    """Each task's payload model, as the worker validates it."""
    from athena_inference.config.celery import app

    # The app's task modules, loaded the way a worker loads them (operator code imports no task itself).
    app.loader.import_default_modules()
    return {name: app.tasks[name.value].request_model for name in TaskName}


def valid_payloads() -> dict[TaskName, dict[str, Any]]:
    """A valid payload for every task: VALID's, else the first example its request model gives in its JSON schema."""
    found: dict[TaskName, dict[str, Any]] = {}
    for task, model in request_models().items():
        examples = model.model_json_schema().get("examples") or []
        if task not in VALID and not examples:
            raise LookupError(f"{task.value} has no sample payload: give {model.__name__} an example (json_schema_extra) or add one to VALID")
        found[task] = VALID.get(task, examples[0] if examples else {})
    return found


def _is_malformed(model: type, args: tuple, kwargs: dict[str, Any]) -> bool:
    from pydantic import ValidationError

    if args:
        return True
    try:
        model.model_validate(kwargs)
    except ValidationError:
        return True
    return False


def malformed_payloads(seed: int = 0) -> list[tuple[TaskName, tuple, dict[str, Any], str]]:
    """Every malformed payload for every task: (task, args, kwargs, what is wrong).

    A mutation that happens to be valid (an int where a float goes) is left out.
    """
    rng = random.Random(seed)
    models = request_models()
    return [
        (task, args, kwargs, what)
        for task, payload in valid_payloads().items()
        for args, kwargs, what in _mutations(task, payload, rng)
        if _is_malformed(models[task], args, kwargs)
    ]


def sample(count: int, seed: int = None) -> list[tuple[TaskName, tuple, dict[str, Any], str]]:
    """`count` of them, drawn across every task."""
    everything = malformed_payloads()
    rng = random.Random(time.time() if seed is None else seed)
    return [rng.choice(everything) for _ in range(count)]
