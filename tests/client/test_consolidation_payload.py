"""ConsolidateRequest: what a caller may send for consolidation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from athena_client.consolidation import MAX_EVENTS, ConsolidateRequest

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
