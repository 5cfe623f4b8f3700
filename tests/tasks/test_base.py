"""tasks.base: payload validation into InvalidInput, and TaskClock timing."""

import time
from datetime import timezone

import pytest

from athena_client.errors import InvalidInput
from athena_client.payloads import EmbedBatchRequest, EmbedRequest, ReasonRequest, ServerTiming
from athena_client.routes import TASK_QUEUES, TaskName
from athena_inference.tasks.base import TaskClock, validate

SERVER = ServerTiming(prompt_tokens=5, request_ms=12.0)


def clock(task=TaskName.EMBED, *, enqueued_at, started_at=1_700_000_000.0):
    return TaskClock(task, enqueued_at, started_at, time.perf_counter())


# --- validate ---


def test_validate_returns_the_parsed_request():
    request = validate(EmbedRequest, {"text": "hello"})
    assert isinstance(request, EmbedRequest)
    assert request.text == "hello"


def test_validate_blank_text_raises_invalid_input_naming_the_field():
    with pytest.raises(InvalidInput) as caught:
        validate(EmbedRequest, {"text": "   "})
    assert "text" in str(caught.value)
    assert "EmbedRequest" in str(caught.value)


def test_validate_out_of_range_temperature_names_temperature():
    with pytest.raises(InvalidInput, match="temperature"):
        validate(ReasonRequest, {"prompt": "Why?", "temperature": 5.0})


def test_validate_unknown_field_names_that_field():
    with pytest.raises(InvalidInput, match="colour"):
        validate(EmbedRequest, {"text": "hi", "colour": "blue"})


def test_validate_missing_field_names_that_field():
    with pytest.raises(InvalidInput, match="prompt"):
        validate(ReasonRequest, {})


def test_validate_names_the_position_of_a_bad_batch_item():
    with pytest.raises(InvalidInput, match=r"texts\.1"):
        validate(EmbedBatchRequest, {"texts": ["ok", ""]})


def test_validate_names_every_bad_field():
    with pytest.raises(InvalidInput) as caught:
        validate(ReasonRequest, {"prompt": "Why?", "max_tokens": 0, "top_p": 2.0})
    assert "max_tokens" in str(caught.value)
    assert "top_p" in str(caught.value)


# --- TaskClock ---


def test_finish_computes_queue_wait_from_enqueued_at():
    timing = clock(enqueued_at=1_700_000_000.0 - 0.25).finish("m", SERVER)
    assert timing.queue_wait_ms == pytest.approx(250.0)


def test_finish_never_reports_negative_queue_wait():
    # The publisher's clock ran ahead of the worker's.
    timing = clock(enqueued_at=1_700_000_000.0 + 2.0).finish("m", SERVER)
    assert timing.queue_wait_ms == 0.0


def test_finish_without_enqueue_stamp_reports_no_queue_wait():
    timing = clock(enqueued_at=None).finish("m", SERVER)
    assert timing.queue_wait_ms is None
    assert timing.enqueued_at is None


def test_finish_run_ms_is_not_negative():
    timing = TaskClock.start(TaskName.REASON, None).finish("m", SERVER)
    assert timing.run_ms >= 0


def test_finish_finished_at_is_not_before_started_at():
    timing = TaskClock.start(TaskName.EMBED, time.time()).finish("m", SERVER)
    assert timing.finished_at >= timing.started_at


@pytest.mark.parametrize("task", list(TaskName))
def test_finish_names_task_and_its_queue(task):
    timing = clock(task, enqueued_at=None).finish("m", SERVER)
    assert timing.task == task.value
    assert timing.queue == TASK_QUEUES[task].value


def test_finish_carries_model_and_server_timing():
    timing = clock(enqueued_at=None).finish("all-MiniLM-L6-v2", SERVER)
    assert timing.model == "all-MiniLM-L6-v2"
    assert timing.server == SERVER


def test_finish_timestamps_are_utc_datetimes_of_the_epochs():
    timing = clock(enqueued_at=1_699_999_999.0, started_at=1_700_000_000.0).finish("m", SERVER)
    assert timing.started_at.tzinfo == timezone.utc
    assert timing.started_at.timestamp() == pytest.approx(1_700_000_000.0)
    assert timing.enqueued_at.timestamp() == pytest.approx(1_699_999_999.0)


def test_start_stamps_the_current_time():
    before = time.time()
    started = TaskClock.start(TaskName.EMBED, 123.0)
    after = time.time()
    assert before <= started.started_at <= after
    assert started.enqueued_at == 123.0
    assert started.task is TaskName.EMBED
