"""The shape of a consolidation answer: the JSON schema the model is held to
(llama.cpp turns it into a grammar), and the check of everything the grammar
cannot express (numeric ranges, ids from the input)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ValidationError

from athena_client.contract.consolidation import UNIT_SCORE_SCHEMA, Pattern
from athena_client.contract.validation import describe

MAX_SOURCES = 8


def patterns_schema(event_ids: list[str], max_patterns: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "patterns": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_patterns,
                "items": {
                    "type": "object",
                    "properties": {
                        # Bounds everywhere: a small model can otherwise repeat itself
                        # until max_tokens cuts the JSON short.
                        "description": {"type": "string", "minLength": 1, "maxLength": 200},
                        "type": {"type": "string", "enum": ["pattern", "decision", "workflow", "fact"]},
                        "confidence": UNIT_SCORE_SCHEMA,
                        "tags": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 4},
                        "evidence": {"type": "array", "items": {"type": "string", "maxLength": 120}, "maxItems": 2},
                        "source_events": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": min(len(event_ids), MAX_SOURCES),
                            "items": {"type": "string", "enum": event_ids},
                        },
                    },
                    "required": ["description", "type", "confidence", "tags", "evidence", "source_events"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["patterns"],
        "additionalProperties": False,
    }


def response_format(event_ids: list[str], max_patterns: int) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": "semantic_patterns", "strict": True, "schema": patterns_schema(event_ids, max_patterns)},
    }


class _Answer(BaseModel):
    patterns: list[Pattern]


def parse_patterns(raw: str, event_ids: list[str]) -> list[Pattern]:
    """Patterns from the model's raw answer; ValueError says everything that is wrong with it."""
    try:
        answer = _Answer.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at {exc.pos})") from None
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None
    known = set(event_ids)
    unknown = sorted({s for p in answer.patterns for s in p.source_events} - known)
    if unknown:
        raise ValueError(f"source_events not among the input ids: {unknown}")
    if not answer.patterns:
        raise ValueError("no patterns")
    return answer.patterns
