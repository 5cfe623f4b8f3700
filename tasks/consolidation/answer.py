"""Patterns out of the reasoning model: ask under the schema, check, and repair once.

The schema keeps the model to the answer's shape; what it cannot check
(ranges, ids from the input) is validated here, and an answer that fails gets
one repair request that quotes the problems. A second failure is
`ModelOutputInvalid`, with the raw answer in its message. Near-duplicate
patterns in one answer (a small model often says the same thing twice) are
merged into one.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel

from athena_client.contract.consolidation import ConsolidateOptions, Pattern, merge_near_duplicates
from athena_client.contract.errors import ModelOutputInvalid
from athena_client.contract.payloads import ServerTiming
from athena_inference.tasks.consolidation import prompt
from athena_inference.tasks.consolidation.schema import parse_patterns, response_format
from athena_inference.workers.llama_server import Completion


class Chats(Protocol):
    """A reasoning server, or the running task's watched generation on it (tasks/generation.py)."""

    def chat(self, messages: list[dict[str, str]], **options: Any) -> Completion: ...


class Extraction(BaseModel):
    patterns: list[Pattern]
    model: str
    repaired: bool
    # The first answer's, whose prompt is the events' (the repair's is longer).
    timing: ServerTiming


def extract_patterns(server: Chats, event_text: str, event_ids: list[str], options: ConsolidateOptions) -> Extraction:
    ask = dict(
        max_tokens=prompt.max_output_tokens(options.max_patterns),
        temperature=options.temperature,
        top_p=0.9,
        stop=[],
        response_format=response_format(event_ids, options.max_patterns),
    )
    out = server.chat(prompt.messages(event_text, options.max_patterns), **ask)
    try:
        return Extraction(patterns=merge_near_duplicates(parse_patterns(out.text, event_ids)), model=out.model, repaired=False, timing=out.timing)
    except ValueError as first:
        if out.finish_reason == "length":
            first = ValueError(f"{first}; the answer was cut at max_tokens")
        problems = str(first)
    retry = server.chat(prompt.repair_messages(event_text, options.max_patterns, out.text, problems), **ask)
    try:
        return Extraction(patterns=merge_near_duplicates(parse_patterns(retry.text, event_ids)), model=retry.model, repaired=True, timing=out.timing)
    except ValueError as second:
        raise ModelOutputInvalid(
            f"patterns failed validation twice ({problems}; after repair: {second}); raw answer: {retry.text}"
        ) from None
