"""The compatibility client's logic, without a broker: Athena's prompt, the answer's
schema and budget, the text Athena's parser reads, and Athena's result shapes."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from athena_client.compat.llm_client import (
    ANSWER_SCHEMA,
    CONSOLIDATION_SYSTEM_PROMPT,
    AthenaAnswer,
    CompressionResult,
    EmbeddingResult,
    LocalLLMClient,
    ReasoningResult,
    consolidation_prompt,
    get_llm_client,
    render_for_athena,
)
from athena_client.errors import AthenaError, InvalidInput, ServerUnavailable
from athena_client.grammar import longest_output


def read_like_athena(text: str) -> list[dict]:
    """What Athena's consolidation reader does with the answer: the ```json fenced block, as a list of dicts."""
    start = text.find("```json")
    end = text.find("```", start + 7)
    assert start >= 0 and end > start, "no fenced JSON block"
    return [{"description": p.get("description", ""), "type": p.get("type", "pattern"), "confidence": float(p.get("confidence", 0.5)),
             "tags": p.get("tags", []), "evidence": p.get("evidence", "")} for p in json.loads(text[start + 7 : end])]


def answer(patterns: list[dict]) -> AthenaAnswer:
    return AthenaAnswer.model_validate({"patterns": patterns, "relationships": [], "insights": ["batch jobs fail silently"]})


def athena_pattern(description: str, **extra) -> dict:
    return {"name": "loud failures", "description": description, "type": "decision", "confidence": 0.8, "evidence_count": 2,
            "tags": ["batch"], "evidence": "events 1 and 2", **extra}


def test_the_prompt_is_athenas_task_events_and_json_instructions():
    prompt = consolidation_prompt("Extract semantic patterns from these episodic events", "Event 1:\n  Content: x")
    assert prompt.startswith("Extract semantic patterns from these episodic events:\n\nEvent 1:\n  Content: x\n\nProvide output in JSON format:")
    for key in ('"patterns"', '"name"', '"evidence_count"', '"relationships"', '"strength"', '"insights"'):
        assert key in prompt
    assert CONSOLIDATION_SYSTEM_PROMPT.startswith("You are a consolidation engine for memory systems.")


def test_athenas_reader_gets_every_pattern_with_its_keys():
    text = render_for_athena(answer([athena_pattern("Batch jobs must fail loudly."), athena_pattern("Host keys are pinned.", type="fact")]))
    read = read_like_athena(text)
    assert [p["description"] for p in read] == ["Batch jobs must fail loudly.", "Host keys are pinned."]
    assert read[1]["type"] == "fact" and read[0]["evidence"] == "events 1 and 2" and read[0]["tags"] == ["batch"]


def test_near_duplicate_patterns_in_one_answer_reach_athena_once():
    text = render_for_athena(answer([athena_pattern("Batch jobs must fail loudly."), athena_pattern("batch jobs must fail loudly", confidence=0.95)]))
    read = read_like_athena(text)
    assert len(read) == 1 and read[0]["confidence"] == 0.95


def test_the_longest_answer_the_grammar_allows_fits_athenas_max_tokens():
    # A token is at least one character, so characters bound tokens.
    assert longest_output(ANSWER_SCHEMA) <= 2048


def test_every_bound_of_the_model_is_one_the_schema_holds_the_model_to():
    pattern = ANSWER_SCHEMA["properties"]["patterns"]
    assert pattern["maxItems"] == AthenaAnswer.model_fields["patterns"].metadata[1].max_length
    assert set(pattern["items"]["required"]) == set(AthenaAnswer.model_fields["patterns"].annotation.__args__[0].model_fields)


def test_with_compression_off_the_context_comes_back_whole_as_athenas_did():
    client = LocalLLMClient(enable_compression=False)
    out = asyncio.run(client.compress_prompt("four words of context", "Summarise."))
    assert out == CompressionResult("four words of context", 4, 4, 1.0, 0.0)


def test_the_factory_takes_athenas_arguments():
    client = get_llm_client(embedding_url="http://embed:8001", reasoning_url="http://reason:8002", enable_compression=False)
    assert (client.embedding_url, client.reasoning_url, client.enable_compression) == ("http://embed:8001", "http://reason:8002", False)
    assert client.timeout_seconds == 60.0


@pytest.mark.parametrize("result", [
    EmbeddingResult([0.1, 0.2], 2, 3.5),
    ReasoningResult("text", 5, 12.0),
    CompressionResult("short", 10, 5, 0.5, 20.0),
])
def test_results_are_athenas_dataclasses_usable_positionally_and_with_asdict(result):
    assert dataclasses.is_dataclass(result)
    assert list(dataclasses.asdict(result).values())[: len(dataclasses.fields(result))] == [getattr(result, f.name) for f in dataclasses.fields(result)]


@pytest.mark.parametrize("error", [AthenaError, InvalidInput, ServerUnavailable])
def test_every_error_is_a_runtime_error_as_athena_catches(error):
    with pytest.raises(RuntimeError):
        raise error("boom")
