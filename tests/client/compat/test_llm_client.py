"""The compatibility client's logic, without a broker: Athena's prompt, the answer's
schema and budget, the text Athena's parser reads, Athena's result shapes, and
how long a generation may wait in the queue and then run."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace

import pytest

from athena_client.compat import llm_client
from athena_client.compat.llm_client import (
    ANSWER_GRAMMAR,
    ANSWER_SCHEMA,
    CONSOLIDATION_SYSTEM_PROMPT,
    MIN_TOKENS_PER_S,
    QUEUE_TIMEOUT_S,
    AthenaAnswer,
    CompressionResult,
    EmbeddingResult,
    LocalLLMClient,
    ReasoningResult,
    consolidation_prompt,
    get_llm_client,
    render_for_athena,
)
from athena_client.contract import payloads
from athena_client.contract.errors import AthenaError, InvalidInput, ServerTimeout, ServerUnavailable
from athena_client.contract.grammar import longest_output
from athena_client.contract.routes import TaskName
from athena_client.result_waiter import Ticket


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


# --- generations: time in the queue is not the model's ---


class FakeWaiter:
    """The result waiter's side of a generation: whether its task starts within the time given."""

    def __init__(self, starts: bool, done: bool = False) -> None:
        self.starts, self.finished = starts, done
        self.waited: list[float] = []
        self.released: list[object] = []

    def task_id(self) -> str:
        return f"athena-fake-{len(self.waited)}"

    def expect(self, task_id: str, *, not_sent_yet: bool = False) -> Ticket:
        ticket = Ticket(f"celery-task-meta-{task_id}")
        if self.finished:
            ticket.done.set()
        return ticket

    def wait_started(self, ticket: Ticket, timeout: float) -> bool:
        self.waited.append(timeout)
        return self.starts

    def release(self, ticket: Ticket) -> None:
        self.released.append(ticket)


class FakeClient:
    """An AthenaClient that records what a generation sends and waits for, and answers with `outcome`."""

    def __init__(self, waiter: FakeWaiter, outcome) -> None:
        self.revoked: list[str] = []
        self.transport = SimpleNamespace(waiter=waiter, submit=self._submit)
        self.canceller = SimpleNamespace(cancel_sent=self.revoked.append)
        self.outcome = outcome
        self.sent: list[tuple] = []
        self.ids: list[str] = []
        self.results: list[float] = []

    def _submit(self, task, request, task_id):
        self.sent.append((task, request))
        self.ids.append(task_id)
        return task_id

    def result(self, task, task_id, timeout):
        self.results.append(timeout)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


ANSWER = payloads.ReasoningResult(
    text="Because.",
    model="qwen2.5-7b-instruct",
    timing={"task": "athena.reason", "queue": "reasoning", "model": "m", "started_at": "2025-01-01T00:00:00+00:00",
            "finished_at": "2025-01-01T00:00:01+00:00", "run_ms": 1000.0,
            "server": {"prompt_tokens": 5, "generated_tokens": 2, "request_ms": 990.0}},
)


@pytest.fixture
def generation(monkeypatch):
    """A LocalLLMClient over a FakeClient: `generation(starts=..., outcome=...)`."""

    def make(starts: bool = True, outcome=ANSWER, done: bool = False, **options) -> tuple[LocalLLMClient, FakeClient]:
        fake = FakeClient(FakeWaiter(starts, done), outcome)
        monkeypatch.setattr(llm_client, "shared_client", lambda timeout: fake)
        return LocalLLMClient(**options), fake

    return make


def test_a_generation_may_run_for_max_tokens_at_the_floor_rate_and_never_less_than_timeout_seconds():
    client = LocalLLMClient()
    assert client.generation_timeout(2048) == 2048 / MIN_TOKENS_PER_S == 409.6
    assert client.generation_timeout(100) == 60.0
    assert LocalLLMClient(timeout_seconds=5, min_tokens_per_second=50).generation_timeout(2048) == 2048 / 50


def test_the_generation_clock_is_given_once_the_task_has_started_and_the_queue_wait_apart(generation):
    client, fake = generation(timeout_seconds=30.0)
    out = asyncio.run(client.reason("Why?", max_tokens=2048))
    assert out.text == "Because." and out.tokens == 2
    [(task, request)] = fake.sent
    assert task is TaskName.REASON and (request.prompt, request.max_tokens, request.temperature) == ("Why?", 2048, 0.7)
    assert fake.transport.waiter.waited == [QUEUE_TIMEOUT_S]
    assert fake.results == [2048 / MIN_TOKENS_PER_S]
    assert len(fake.transport.waiter.released) == 1 and fake.revoked == []


def test_consolidation_is_a_generation_of_athenas_2048_tokens_held_to_the_grammar(generation):
    client, fake = generation(outcome=ANSWER.model_copy(update={"text": json.dumps(answer([athena_pattern("Fail loudly.")]).model_dump())}))
    out = asyncio.run(client.consolidate_with_reasoning("Event 1:\n  Content: x"))
    [(_, request)] = fake.sent
    assert (request.max_tokens, request.temperature, request.grammar) == (2048, 0.5, ANSWER_GRAMMAR)
    assert fake.results == [2048 / MIN_TOKENS_PER_S] and read_like_athena(out.text)[0]["description"] == "Fail loudly."


def test_a_generation_no_worker_takes_in_time_is_revoked_and_says_so(generation):
    client, fake = generation(starts=False, queue_timeout_seconds=7.0)
    with pytest.raises(ServerTimeout, match="waited 7 s in the reasoning queue and no worker took it, so it was revoked"):
        asyncio.run(client.reason("Why?"))
    assert fake.revoked == fake.ids and len(fake.ids) == 1 and fake.results == []
    assert len(fake.transport.waiter.released) == 1


def test_a_generation_that_outruns_its_time_after_starting_says_how_long_it_had(generation):
    client, fake = generation(outcome=ServerTimeout("athena.reason task-1 gave no result within 410 s"))
    with pytest.raises(ServerTimeout, match=r"started but gave no answer within 409.6 s \(max_tokens 2048 at 5 tokens/s"):
        asyncio.run(client.reason("Why?"))
    assert fake.revoked == []


def test_the_tasks_own_timeout_reaches_the_caller_unchanged(generation):
    # The worker's time limit, say: the task ended, with that error as its result.
    client, _ = generation(outcome=ServerTimeout("the reasoning server did not answer in 600 s"), done=True)
    with pytest.raises(ServerTimeout, match="^the reasoning server did not answer in 600 s$"):
        asyncio.run(client.reason("Why?"))


def test_a_bad_request_fails_before_anything_is_sent(generation):
    client, fake = generation()
    with pytest.raises(InvalidInput, match="max_tokens"):
        asyncio.run(client.reason("Why?", max_tokens=0))
    assert fake.sent == []


@pytest.mark.parametrize("option", ["timeout_seconds", "queue_timeout_seconds", "min_tokens_per_second"])
def test_timeouts_and_the_floor_rate_must_be_positive(option):
    with pytest.raises(InvalidInput, match=option):
        LocalLLMClient(**{option: 0})
