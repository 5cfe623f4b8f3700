"""consolidate end to end: real workers on every queue, the default models."""

from __future__ import annotations

import pytest

from athena_client.consolidation import ConsolidateOptions, ConsolidateRequest, ConsolidationResult, EpisodicEvent
from athena_client.errors import InvalidInput
from athena_client.routes import TaskName

EVENTS = [
    EpisodicEvent(id="e1", timestamp="2026-11-02T09:14:00Z", event_type="incident", content="The nightly reconciliation job failed silently for three days after the bank rotated its SFTP host key.", tags=["payments", "batch"]),
    EpisodicEvent(id="e2", timestamp="2026-11-02T11:40:00Z", event_type="decision", content="Team decided that every batch job must exit non-zero on any exception and page the on-call engineer.", tags=["batch", "alerting"]),
    EpisodicEvent(id="e3", timestamp="2026-11-03T10:05:00Z", event_type="decision", content="Host keys are now pinned in configuration; key rotations are announced a week ahead.", tags=["security"]),
    EpisodicEvent(id="e4", timestamp="2026-11-04T15:30:00Z", event_type="task", content="Dev wrote a backfill script that replayed three missing days in order and found 214 mismatches.", tags=["payments"]),
    EpisodicEvent(id="e5", timestamp="2026-11-05T09:00:00Z", event_type="review", content="Retrospective: silent failure was the real defect, not the key rotation.", tags=["retro"]),
    EpisodicEvent(id="e6", timestamp="2026-11-05T09:45:00Z", event_type="decision", content="Every batch job reports its processed row count to the metrics store so a drop to zero shows on the dashboard.", tags=["batch", "metrics"]),
    EpisodicEvent(id="e7", timestamp="2026-11-06T14:10:00Z", event_type="task", content="The invoice exporter and currency-rate importer were changed to stop swallowing exceptions.", tags=["batch"]),
    EpisodicEvent(id="e8", timestamp="2026-11-07T16:00:00Z", event_type="workflow", content="On-call checks the batch dashboard every morning before standup and files issues for jobs with zero rows.", tags=["on-call", "batch"]),
]
IDS = {e.id for e in EVENTS}


def consolidate(sender, request: ConsolidateRequest, timeout: float = 600) -> ConsolidationResult:
    pending = sender.app.send_task(TaskName.CONSOLIDATE.value, kwargs=request.model_dump(mode="json"), queue="consolidation")
    return ConsolidationResult.model_validate(pending.get(timeout=timeout))


def test_cluster_of_eight_events_yields_valid_patterns_citing_input_ids(sender):
    out = consolidate(sender, ConsolidateRequest(events=EVENTS, options=ConsolidateOptions(max_patterns=3, temperature=0.0)))
    assert 1 <= len(out.patterns) <= 3
    for pattern in out.patterns:
        assert pattern.description.strip() and 0 <= pattern.confidence <= 1
        assert set(pattern.source_events) <= IDS
    assert out.dropped_event_ids == []
    assert [s.stage for s in out.stages if s.stage != "repair"] == ["prepare", "reasoning"]
    reasoning = next(s for s in out.stages if s.stage == "reasoning")
    assert reasoning.queue == "reasoning" and reasoning.queue_wait_ms is not None and reasoning.run_ms > 0
    assert out.model == "SmolLM2-135M-Instruct"


def test_cluster_compressed_first_and_patterns_embedded(sender):
    options = ConsolidateOptions(max_patterns=2, compress=True, embed_patterns=True, temperature=0.0)
    out = consolidate(sender, ConsolidateRequest(events=EVENTS, options=options))
    assert out.compressed
    assert [s.stage for s in out.stages] == ["prepare", "compression", "reasoning", "embedding"]
    assert [s.queue for s in out.stages] == ["consolidation", "compression", "reasoning", "embeddings"]
    for pattern in out.patterns:
        assert set(pattern.source_events) <= IDS
        assert pattern.embedding is not None and len(pattern.embedding) == 384


@pytest.mark.parametrize(
    "events, fragment",
    [
        ([{"id": "a", "timestamp": "2026-11-01T00:00:00Z", "content": "no type"}], "event_type"),
        ([{"id": "a", "timestamp": "2026-11-01T00:00:00Z", "event_type": "note", "content": "  "}], "content"),
        ([], "events"),
        ([{"id": str(i), "timestamp": "2026-11-01T00:00:00Z", "event_type": "note", "content": "x"} for i in range(10_000)], "events"),
    ],
)
def test_malformed_cluster_gets_a_clear_error(sender, events, fragment):
    pending = sender.app.send_task(TaskName.CONSOLIDATE.value, kwargs={"events": events}, queue="consolidation")
    with pytest.raises(InvalidInput, match=fragment):
        pending.get(timeout=120)
