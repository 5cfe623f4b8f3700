"""consolidate end to end: real workers on every queue, the default models."""

from __future__ import annotations

import pytest

from athena_client.contract.consolidation import ConsolidateOptions, ConsolidateRequest, ConsolidationResult
from athena_client.contract.errors import InvalidInput
from athena_client.contract.routes import TaskName
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS as EVENTS

IDS = {e.id for e in EVENTS}


def consolidate(sender, request: ConsolidateRequest, timeout: float = 600) -> ConsolidationResult:
    pending = sender.app.send_task(TaskName.CONSOLIDATE.value, kwargs=request.model_dump(mode="json"), queue="consolidation")
    return ConsolidationResult.model_validate(pending.get(timeout=timeout))


def test_cluster_compressed_first_and_patterns_embedded(sender):
    options = ConsolidateOptions(max_patterns=2, compress=True, embed_patterns=True, temperature=0.0)
    out = consolidate(sender, ConsolidateRequest(events=EVENTS, options=options))
    assert out.compressed
    gate = out.stages[0].compression_gate
    assert gate.asked is True and gate.compress and "as asked" in gate.reason
    assert 0 < out.compression_ratio < 1
    assert [s.stage for s in out.stages] == ["prepare", "compression", "reasoning", "embedding"]
    assert [s.queue for s in out.stages] == ["consolidation", "compression", "reasoning_background", "embeddings"]
    for pattern in out.patterns:
        assert set(pattern.source_events) <= IDS
        assert pattern.embedding is not None and len(pattern.embedding) == 384


def test_cluster_of_eight_events_yields_valid_patterns_citing_input_ids(sender):
    out = consolidate(sender, ConsolidateRequest(events=EVENTS, options=ConsolidateOptions(max_patterns=3, temperature=0.0)))
    assert 1 <= len(out.patterns) <= 3
    for pattern in out.patterns:
        assert pattern.description.strip() and 0 <= pattern.confidence <= 1
        assert set(pattern.source_events) <= IDS
    assert out.dropped_event_ids == []
    # The default gate, with the figures the compressed run above left in the metrics: the compressor's
    # time against the prompt time it would save (on these small models it does not pay).
    gate = out.stages[0].compression_gate
    assert gate.asked == "auto" and gate.compressor_ms_per_kchar and gate.prompt_ms_per_token
    assert gate.compress == (gate.expected_compress_ms < gate.saved_prompt_ms) == out.compressed
    assert [s.stage for s in out.stages if s.stage != "repair"] == ["prepare", *(["compression"] if gate.compress else []), "reasoning"]
    reasoning = next(s for s in out.stages if s.stage == "reasoning")
    assert reasoning.queue == "reasoning_background" and reasoning.queue_wait_ms is not None and reasoning.run_ms > 0
    assert out.model == "SmolLM2-135M-Instruct"


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
