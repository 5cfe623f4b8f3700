"""`reason_stream` against the real reasoning worker and server: the answer in
pieces as it is written, the same typed result at the end, a reader that
reconnects going on from its last piece, and nothing written for a call that
does not stream."""

from __future__ import annotations

import asyncio

import pytest

from athena_client.async_client import AsyncAthenaClient
from athena_client.contract.errors import Cancelled, InvalidInput, UnknownTask
from athena_client.contract.payloads import ReasoningResult, ReasonRequest
from athena_client.contract.routes import TaskName
from athena_client.shared_redis.piece_streams import stream_key
from tests.harness import endless_generation

PROMPT = "Name three colours of the sea."


def test_the_stream_yields_the_answer_piece_by_piece_and_ends_with_its_typed_result(sender):
    stream = sender.reason_stream(PROMPT, max_tokens=24, temperature=0.0)
    pieces = list(stream)
    assert len(pieces) > 3 and all(pieces)
    result = stream.result
    assert isinstance(result, ReasoningResult) and "".join(pieces) == result.text
    assert result.timing.server.generated_tokens >= len(pieces) - 1 and result.timing.run_ms > 0
    # The same question unstreamed, greedily: the same answer.
    assert sender.reason(PROMPT, max_tokens=24, temperature=0.0).text == result.text
    redis = sender._caller_redis()
    assert 0 < redis.ttl(stream_key(stream.task_id)) <= 600


def test_a_reader_that_lost_its_connection_resumes_after_the_last_piece_it_saw(sender):
    stream = sender.reason_stream(PROMPT, max_tokens=24, temperature=0.0)
    pieces = iter(stream)
    first = [next(pieces) for _ in range(3)]
    # The reader goes away mid-answer; another picks up from its last entry id.
    resumed = sender.resume_stream(stream.task_id, stream.last_id)
    rest = list(resumed)
    assert "".join(first + rest) == resumed.result.text
    with pytest.raises(UnknownTask):
        sender.resume_stream("0b9f7a52-0000-4000-8000-000000000001")


def test_the_async_client_streams_with_async_for(sender, stack):
    async def scenario() -> tuple[list[str], ReasoningResult]:
        async with AsyncAthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]) as client:
            stream = await client.reason_stream(PROMPT, max_tokens=16, temperature=0.0)
            return [piece async for piece in stream], stream.result

    pieces, result = asyncio.run(scenario())
    assert len(pieces) > 1 and "".join(pieces) == result.text


def test_a_call_that_does_not_stream_writes_nothing_to_a_stream(sender):
    task_id = sender.submit(TaskName.REASON, ReasonRequest(prompt=PROMPT, max_tokens=8))
    sender.result(TaskName.REASON, task_id, timeout=60)
    assert not sender._caller_redis().exists(stream_key(task_id))


def test_a_streamed_generation_cancelled_mid_answer_ends_its_stream_with_cancelled(sender):
    request = endless_generation("Write about a lighthouse.").model_dump()
    stream = sender.reason_stream(request["prompt"], max_tokens=request["max_tokens"], grammar=request["grammar"])
    seen = []
    with pytest.raises(Cancelled):
        for piece in stream:
            seen.append(piece)
            if len(seen) == 5:
                assert sender.cancel(stream.task_id).state == "running"
    # Pieces are tokens, not words: what came is a prefix of what the grammar allows.
    assert len(seen) >= 5 and ("lighthouse " * 200).startswith("".join(seen))


def test_a_stream_of_a_request_the_worker_refuses_raises_its_error_without_a_piece(sender):
    # Valid for the client, refused by the server: a grammar it cannot parse.
    stream = sender.reason_stream(PROMPT, max_tokens=8, grammar="root ::= (")
    with pytest.raises(InvalidInput):
        list(stream)


def test_a_stream_left_before_its_end_inside_with_cancels_its_generation(sender):
    request = endless_generation("Write about a quay.").model_dump()
    with sender.reason_stream(request["prompt"], max_tokens=request["max_tokens"], grammar=request["grammar"]) as stream:
        for _ in zip(range(3), stream):
            pass
    with pytest.raises(Cancelled):
        sender.result(TaskName.REASON, stream.task_id, timeout=30)
