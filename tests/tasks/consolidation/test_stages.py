"""The reasoning stage's validate-and-repair logic, in-process over a MockTransport server."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from athena_client.contract.consolidation import ConsolidationResult
from athena_client.contract.errors import ModelOutputInvalid
from athena_client.contract.routes import Queue
from athena_inference.tasks import seams
from athena_inference.tasks.consolidation.stages import ConsolidationState, reason_stage
from athena_inference.workers.llama_server import LlamaServer

pytestmark = pytest.mark.usefixtures("metrics")

VALID = json.dumps({"patterns": [{"description": "Batch jobs fail loudly", "type": "decision", "confidence": 0.9,
                                  "tags": [], "evidence": [], "source_events": ["e1"]}]})


def serve_answers(answers: list[str], seen: list[dict]):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        text = answers[min(len(seen), len(answers)) - 1]
        return httpx.Response(200, json={"model": "fake", "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

    return handler


@pytest.fixture
def state() -> dict:
    # The reasoning stage is the job's last: what it returns is the job's result.
    return ConsolidationState(options={"max_patterns": 2, "temperature": 0.2}, event_ids=["e1", "e2"], event_text="[e1] ...\n[e2] ...",
                              dropped_event_ids=[], remaining=[], started_at=time.time()).model_dump(mode="json")


def use_answers(answers: list[str]) -> list[dict]:
    seen: list[dict] = []
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(serve_answers(answers, seen)))
    seams.use_llama(Queue.REASONING, server)
    return seen



def test_valid_answer_needs_no_repair_and_asks_with_a_json_schema(state, metrics):
    seen = use_answers([VALID])
    out = ConsolidationResult.model_validate(reason_stage(**state))
    assert not out.repaired and out.patterns[0].source_events == ["e1"]
    assert metrics.stats("athena.consolidate").success == 1
    schema = seen[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["patterns"]["items"]["properties"]["source_events"]["items"]["enum"] == ["e1", "e2"]


def test_invalid_answer_is_repaired_once(state):
    seen = use_answers(['{"patterns": [{"description": "x"}]}', VALID])
    out = ConsolidationResult.model_validate(reason_stage(**state))
    assert out.repaired and len(seen) == 2
    assert "invalid" in seen[1]["messages"][-1]["content"]


def test_two_invalid_answers_fail_clearly_and_keep_the_raw_text(state, metrics):
    use_answers(['{"patterns": []', '{"patterns": [{"source_events": ["e9"]}]}'])
    with pytest.raises(ModelOutputInvalid, match=r'raw answer: \{"patterns": \[\{"source_events": \["e9"\]\}\]\}'):
        reason_stage(**state)
    assert metrics.stats("athena.consolidate").failures == 1
