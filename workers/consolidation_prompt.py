"""What the reasoning model is asked for a consolidation, and how its answer is checked.

The answer is constrained by a JSON schema (llama.cpp turns it into a grammar),
so the model cannot stray from the shape; validation still checks everything
the grammar cannot (numeric ranges, ids from the input), and a failed answer
gets one repair attempt.
"""

from __future__ import annotations

import json
from typing import Callable

from pydantic import BaseModel, ValidationError

from athena_client.consolidation import EpisodicEvent, Pattern

SYSTEM = (
    "You consolidate an AI agent's episodic memory into semantic memory. From the events given, "
    "extract lasting patterns: recurring patterns, decisions and their reasons, workflows, and facts. "
    "Each pattern cites the ids of the events that support it. Be concise and specific."
)
# Tokens the system message, the instructions and chat-template markup take, with margin.
PROMPT_OVERHEAD_TOKENS = 320
MAX_SOURCES = 8
# The longest pattern the schema allows is about 700 characters (200 + 4 * 24 +
# 2 * 120, 8 ids, JSON). SmolLM2 wrote 2.9 characters a token when it filled
# every field to the brim; 350 tokens a pattern leaves room even at 2.
TOKENS_PER_PATTERN = 350


def render_event(event: EpisodicEvent) -> str:
    tags = f" (tags: {', '.join(event.tags)})" if event.tags else ""
    return f"[{event.id}] {event.timestamp.isoformat()} {event.event_type}: {event.content}{tags}"


def max_output_tokens(max_patterns: int) -> int:
    return 64 + TOKENS_PER_PATTERN * max_patterns


def fit_events(
    events: list[EpisodicEvent], budget_tokens: int, count_tokens: Callable[[str], int]
) -> tuple[list[EpisodicEvent], list[str]]:
    """Keep the newest events whose lines fit the budget; return them in time order, and the ids left out.

    Consolidation is about what the agent did lately, so the oldest events give way first.
    """
    newest_first = sorted(events, key=lambda e: e.timestamp, reverse=True)
    kept, dropped, used = [], [], 0
    for event in newest_first:
        cost = count_tokens(render_event(event)) + 1
        if used + cost <= budget_tokens:
            kept.append(event)
            used += cost
        else:
            dropped.append(event)
    kept.sort(key=lambda e: e.timestamp)
    return kept, [e.id for e in sorted(dropped, key=lambda e: e.timestamp)]


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
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
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


def messages(event_text: str, max_patterns: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": (
                f"Events, one per line, each starting with its [id]:\n{event_text}\n\n"
                f"Return at most {max_patterns} patterns as JSON. For each: description, type (pattern, decision, "
                "workflow or fact), confidence between 0 and 1, tags, evidence (short quotes from the events), "
                "and source_events (ids of the events above, without brackets)."
            ),
        },
    ]


def repair_messages(event_text: str, max_patterns: int, raw: str, problems: str) -> list[dict[str, str]]:
    return messages(event_text, max_patterns) + [
        {"role": "assistant", "content": raw},
        {"role": "user", "content": f"That answer is invalid: {problems}. Return corrected JSON only."},
    ]


class _Answer(BaseModel):
    patterns: list[Pattern]


def parse_patterns(raw: str, event_ids: list[str]) -> list[Pattern]:
    """Patterns from the model's raw answer; ValueError says everything that is wrong with it."""
    try:
        answer = _Answer.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at {exc.pos})") from None
    except ValidationError as exc:
        raise ValueError(
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        ) from None
    known = set(event_ids)
    unknown = sorted({s for p in answer.patterns for s in p.source_events} - known)
    if unknown:
        raise ValueError(f"source_events not among the input ids: {unknown}")
    if not answer.patterns:
        raise ValueError("no patterns")
    return answer.patterns
