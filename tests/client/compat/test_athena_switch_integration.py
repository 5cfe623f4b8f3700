"""Athena switched over by its imports alone: its call patterns against real workers,
from a virtual environment that holds the client only."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from athena_client.compat import connection
from athena_client.compat.llm_client import LocalLLMClient
from athena_client.contract.routes import Queue
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS as EVENTS

PROGRAM = Path(__file__).with_name("athena_program.py")
pytestmark = pytest.mark.integration


def athena_events_text(events) -> str:
    """Events laid out as Athena's consolidation reasoner formats them."""
    lines = []
    for number, event in enumerate(events, 1):
        lines += [f"Event {number}:", f"  Time: {event.timestamp}", f"  Type: {event.event_type}", f"  Content: {event.content[:200]}"]
        if event.tags:
            lines.append(f"  Tags: {', '.join(event.tags)}")
        lines.append("")
    return "\n".join(lines)


def read_patterns(text: str) -> list[dict]:
    start = text.find("```json")
    end = text.find("```", start + 7)
    assert start >= 0 and end > start, f"no fenced JSON block in {text!r}"
    return json.loads(text[start + 7 : end])


@pytest.fixture
def athena_on_four_slots(stack, monkeypatch):
    """This process as Athena would be configured, in front of a reasoning lane of its own
    with four slots: twenty answers, four at a time, in well under twenty answers' time."""
    with stack.side_lane(Queue.REASONING, "four-slots", own_server=True, ATHENA_REASONING_SLOTS="4") as side:
        monkeypatch.setenv("ATHENA_BROKER_URL", side.env["ATHENA_BROKER_URL"])
        monkeypatch.setenv("ATHENA_RESULT_BACKEND", side.env["ATHENA_RESULT_BACKEND"])
        monkeypatch.setattr(connection, "_clients", {})
        yield


def test_athenas_call_patterns_run_with_only_their_imports_changed(sender, stack, client_only_python):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATHENA_", "LLAMACPP_"))}
    env.update(ATHENA_BROKER_URL=stack.env["ATHENA_BROKER_URL"], ATHENA_RESULT_BACKEND=stack.env["ATHENA_RESULT_BACKEND"])
    done = subprocess.run([client_only_python, str(PROGRAM)], env=env, capture_output=True, text=True, timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    assert out["health"] == {"embedding": True, "reasoning": True, "compression": True}
    assert out["health_off"]["compression"] is False
    assert out["embed"] == {"kinds": {"embedding": "list", "dimension": "int", "latency_ms": "float"}, "dimension": 384, "length": 384}
    assert out["embed_batch"]["count"] == 40 and out["embed_batch"]["dimensions"] == [384]
    assert out["reason"]["kinds"] == {"text": "str", "tokens": "int", "latency_ms": "float", "answer": "NoneType"}
    assert 0 < out["reason"]["tokens"] <= 48 and out["reason"]["text"]
    assert out["compress"]["kinds"] == {
        "compressed_prompt": "str", "original_tokens": "int", "compressed_tokens": "int", "compression_ratio": "float", "latency_ms": "float",
    }
    assert 0.3 < out["compress"]["ratio"] < 0.7
    assert out["compress"]["asdict"] == ["compressed_prompt", "compressed_tokens", "compression_ratio", "latency_ms", "original_tokens"]
    assert out["compress_off"] == {"same": True, "ratio": 1.0}
    assert out["consolidate"]["patterns"] >= 1 and out["consolidate"]["evidence_is_text"]
    assert set(out["consolidate"]["types"]) <= {"pattern", "decision", "workflow", "fact"}
    assert out["blank_embed"] == "InvalidInput"

    store = out["memory_store"]
    assert store["dim"] == 384 and store["embed"] == ["list", 384, "float"]
    assert store["batch"] == [3, [384]] and store["empty_batch"] == []
    assert store["version"] == "all-MiniLM-L6-v2" and store["self_similarity"] == 1.0

    monitor = out["monitor"]
    assert monitor["embedding"] == sorted(["total_operations", "successful", "failed", "success_rate", "avg_latency_ms", "min_latency_ms",
                                           "max_latency_ms", "total_tokens_processed", "avg_dimension"])
    assert "total_output_tokens" in monitor["reasoning"] and "avg_compression_ratio" in monitor["compression"]
    # The figures are the workers' own, shared in Redis and written a quarter of a second at a time
    # (ATHENA_METRICS_FLUSH_S): they count this program's calls made seconds before (the embeds ahead
    # of its reasoning; its memory store's, a moment before, may not be in yet) and earlier ones.
    assert monitor["operations"]["embedding"] >= 1 + 2 and monitor["operations"]["reasoning"] >= 1


def test_consolidate_with_reasoning_answers_parseable_json_twenty_times_out_of_twenty(athena_on_four_slots):
    client = LocalLLMClient()
    # Five clusters of three events: the grammar, not the cluster, is what must hold every time.
    texts = [athena_events_text(EVENTS[start : start + 3]) for start in range(0, 5)]

    async def twenty_runs():
        return await asyncio.gather(*(client.consolidate_with_reasoning(texts[run % len(texts)]) for run in range(20)))

    answers = asyncio.run(twenty_runs())
    for answer in answers:
        patterns = read_patterns(answer.text)
        assert patterns and all({"description", "type", "confidence", "tags", "evidence"} <= set(p) for p in patterns)
        assert all(isinstance(p["evidence"], str) and 0 <= p["confidence"] <= 1 for p in patterns)
        assert set(answer.answer) == {"patterns", "relationships", "insights"}


def test_a_dump_of_athenas_events_consolidates_and_comes_back_in_athenas_shape(sender):
    athena_events = [
        {"id": number, "project_id": 7, "session_id": "s-42", "timestamp": event.timestamp.replace(tzinfo=None).isoformat(),
         "event_type": event.event_type, "content": event.content, "outcome": "success", "context": {"cwd": "/srv/payments"},
         "duration_ms": 900, "files_changed": 0, "importance_score": 0.7, "evidence_type": "observed", "lifecycle_status": "active"}
        for number, event in enumerate(EVENTS[:4], start=100)
    ]
    result = sender.consolidation(athena_events, max_patterns=2, temperature=0.0)
    by_id = {str(e["id"]): e for e in athena_events}
    assert result.patterns
    for pattern in result.patterns:
        shaped = pattern.athena_dict(by_id)
        assert isinstance(shaped["evidence"], str)
        assert shaped["source_events"] and all(source in athena_events for source in shaped["source_events"])
    descriptions = [p.description.lower().strip(" .") for p in result.patterns]
    assert len(descriptions) == len(set(descriptions))
