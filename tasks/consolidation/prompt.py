"""What the reasoning model is asked for a consolidation: the system message,
the events as lines, which events fit the context, and the repair request."""

from __future__ import annotations

from typing import Callable

from athena_client.contract.consolidation import EpisodicEvent

SYSTEM = (
    "You consolidate an AI agent's episodic memory into semantic memory. From the events given, "
    "extract lasting patterns: recurring patterns, decisions and their reasons, workflows, and facts. "
    "Each pattern cites the ids of the events that support it. Be concise and specific."
)
# Tokens the system message, the instructions and chat-template markup take, with margin.
PROMPT_OVERHEAD_TOKENS = 320
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
