"""ConsolidateRequest: what a caller may send for consolidation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from athena_client.contract.consolidation import MAX_EVENTS, ConsolidateRequest, Pattern, merge_near_duplicates

EVENT = {"id": 1, "timestamp": "2026-11-01T10:00:00Z", "event_type": "note", "content": "text", "tags": ["a"]}


def test_numeric_ids_travel_as_text():
    assert ConsolidateRequest(events=[EVENT]).events[0].id == "1"


def test_repeated_ids_are_refused():
    with pytest.raises(ValidationError, match="unique"):
        ConsolidateRequest(events=[EVENT, EVENT])


def test_more_than_a_cluster_is_refused():
    events = [dict(EVENT, id=i) for i in range(MAX_EVENTS + 1)]
    with pytest.raises(ValidationError, match="events"):
        ConsolidateRequest(events=events)


@pytest.mark.parametrize("missing", ["id", "timestamp", "event_type", "content"])
def test_missing_fields_are_refused(missing):
    event = {k: v for k, v in EVENT.items() if k != missing}
    with pytest.raises(ValidationError, match=missing):
        ConsolidateRequest(events=[event])


def test_options_are_bounded():
    with pytest.raises(ValidationError, match="max_patterns"):
        ConsolidateRequest(events=[EVENT], options={"max_patterns": 0})


# --- Athena's own events and patterns ---

ATHENA_EVENT = {
    "id": 42, "project_id": 7, "session_id": "s-1", "timestamp": "2026-11-02T09:14:00", "event_type": "decision",
    "content": "Every batch job must exit non-zero on any exception.", "outcome": "success",
    "context": {"cwd": "/srv", "files": ["jobs.py"], "task": None, "phase": None, "branch": "main"},
    "duration_ms": 1200, "files_changed": 1, "lines_added": 4, "lines_deleted": 1, "learned": None,
    "confidence": 1.0, "evidence_type": "observed", "importance_score": 0.5, "has_blocker": False,
}


def test_an_athena_event_dump_is_taken_with_its_extra_fields_left_out():
    event = ConsolidateRequest(events=[ATHENA_EVENT]).events[0]
    assert event.model_dump(exclude={"timestamp"}) == {
        "id": "42", "event_type": "decision", "content": "Every batch job must exit non-zero on any exception.", "tags": [],
    }


def test_an_athena_event_without_a_type_or_an_id_gets_stand_ins():
    event = ConsolidateRequest(events=[{**ATHENA_EVENT, "id": None, "event_type": None}]).events[0]
    assert event.event_type == "unspecified" and event.id.startswith("sha:")


def test_bad_values_in_an_athena_event_are_still_refused():
    with pytest.raises(ValidationError, match="content"):
        ConsolidateRequest(events=[{**ATHENA_EVENT, "content": "   "}])


def test_a_field_neither_ours_nor_athenas_is_still_refused():
    with pytest.raises(ValidationError, match="colour"):
        ConsolidateRequest(events=[{**ATHENA_EVENT, "colour": "blue"}])


def test_an_athena_pydantic_event_is_taken_as_it_is():
    from pydantic import BaseModel, ConfigDict

    class AthenaEvent(BaseModel):  # the shape of athena.episodic.models.EpisodicEvent, trimmed
        model_config = ConfigDict(extra="allow")

    event = ConsolidateRequest(events=[AthenaEvent(**ATHENA_EVENT)]).events[0]
    assert event.id == "42" and event.event_type == "decision"


def test_timestamps_with_and_without_a_time_zone_are_refused_together():
    aware = {**EVENT, "id": 2, "timestamp": "2026-11-01T10:00:00+01:00"}
    naive = {**EVENT, "id": 3, "timestamp": "2026-11-01T11:00:00"}
    with pytest.raises(ValidationError, match="time zone"):
        ConsolidateRequest(events=[aware, naive])


def pattern(description: str, **extra) -> Pattern:
    fields = dict(description=description, type="decision", confidence=0.6, tags=["a"], evidence=["e1 says so"], source_events=["1"])
    return Pattern(**{**fields, **extra})


def test_near_duplicate_patterns_are_merged_into_the_first():
    merged = merge_near_duplicates([
        pattern("Batch jobs report their processed row count."),
        pattern("batch jobs report their processed row count", confidence=0.9, tags=["b"], source_events=["2"]),
        pattern("On-call checks the dashboard every morning."),
    ])
    assert [p.description for p in merged] == ["Batch jobs report their processed row count.", "On-call checks the dashboard every morning."]
    assert (merged[0].confidence, merged[0].tags, merged[0].source_events) == (0.9, ["a", "b"], ["1", "2"])


def test_patterns_that_differ_in_substance_stay_apart():
    assert len(merge_near_duplicates([pattern("Jobs fail loudly."), pattern("Host keys are pinned in configuration.")])) == 2


def test_a_pattern_in_athenas_shape_has_evidence_as_text_and_its_source_events_resolved():
    events = {"1": {"id": 1, "content": "the event itself"}}
    athena = pattern("Jobs fail loudly.", evidence=["first", "second"]).athena_dict(events)
    assert athena["evidence"] == "first; second"
    assert athena["source_events"] == [{"id": 1, "content": "the event itself"}] and athena["source_event_ids"] == ["1"]
