"""Fitting events into the context, the answer's schema, and checking the answer."""

from __future__ import annotations

import json

import pytest

from athena_client.contract.consolidation import EpisodicEvent
from athena_inference.tasks.consolidation.prompt import fit_events, render_event
from athena_inference.tasks.consolidation.schema import parse_patterns, patterns_schema


def event(i: int, words: int = 5) -> EpisodicEvent:
    return EpisodicEvent(id=f"e{i}", timestamp=f"2026-11-{i:02d}T10:00:00Z", event_type="note", content=" ".join(["word"] * words))


def count_words(text: str) -> int:
    return len(text.split())


def test_all_events_are_kept_when_they_fit():
    events = [event(i) for i in range(1, 6)]
    kept, dropped = fit_events(events, budget_tokens=1000, count_tokens=count_words)
    assert [e.id for e in kept] == ["e1", "e2", "e3", "e4", "e5"] and dropped == []


def test_oldest_events_give_way_first_and_are_reported():
    events = [event(i) for i in (3, 1, 4, 2)]
    line = count_words(render_event(event(1))) + 1
    kept, dropped = fit_events(events, budget_tokens=2 * line, count_tokens=count_words)
    assert [e.id for e in kept] == ["e3", "e4"]
    assert dropped == ["e1", "e2"]


def test_schema_limits_sources_to_input_ids():
    schema = patterns_schema(["a", "b"], max_patterns=3)
    item = schema["properties"]["patterns"]["items"]
    assert item["properties"]["source_events"]["items"]["enum"] == ["a", "b"]
    assert item["properties"]["source_events"]["maxItems"] == 2
    assert schema["properties"]["patterns"]["maxItems"] == 3


def answer(**overrides) -> str:
    pattern = {"description": "Batch jobs fail loudly", "type": "decision", "confidence": 0.8,
               "tags": ["batch"], "evidence": ["exit non-zero"], "source_events": ["e1"]}
    pattern.update(overrides)
    return json.dumps({"patterns": [pattern]})


def test_valid_answer_parses_into_patterns():
    [pattern] = parse_patterns(answer(), ["e1", "e2"])
    assert pattern.type == "decision" and pattern.source_events == ["e1"]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ('{"patterns": [', "not JSON"),
        (answer(confidence=1.5), "confidence"),
        (answer(type="opinion"), "type"),
        (answer(source_events=["e9"]), "e9"),
        (answer(source_events=[]), "source_events"),
    ],
)
def test_invalid_answer_says_what_is_wrong(raw, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_patterns(raw, ["e1", "e2"])
