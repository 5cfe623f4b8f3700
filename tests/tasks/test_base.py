"""tasks.base: TaskClock timing, and the policy AthenaTask applies to every task."""

import importlib
import inspect
import time
from datetime import timezone

import httpx
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.saferepr import saferepr

from athena_client.contract.errors import InternalError, InvalidInput, ServerTimeout, ServerUnavailable
from athena_client.contract.payloads import EmbeddingResult, ServerTiming
from athena_client.contract.routes import TASK_QUEUES, Queue, TaskName
from athena_inference.config.celery import TASK_MODULES, app
from athena_inference.tasks import seams
from athena_client.contract.routes import ENQUEUED_AT_HEADER
from athena_inference.tasks.base import AthenaTask, Outcome, TaskClock, running_clock, task_timing
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.metrics import MetricsSink, MetricsStore
from tests.embedding_fakes import WordServer

SERVER = ServerTiming(prompt_tokens=5, request_ms=12.0)


def clock(task=TaskName.EMBED, *, enqueued_at, started_at=1_700_000_000.0):
    return TaskClock(task, enqueued_at, started_at, time.perf_counter())


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


# --- AthenaTask: the one policy ---


@pytest.fixture
def tasks(metrics):
    for module in TASK_MODULES:
        importlib.import_module(module)
    return {name: task for name, task in app.tasks.items() if name.startswith("athena.")}



def answer_with(handler) -> None:
    # No sleeping between the seam's own tries: these tests are about the task.
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(handler), sleep=lambda s: None)
    seams.use_llama(Queue.EMBEDDINGS, server)


def raising(exc: BaseException):
    def handler(request):
        raise exc

    return handler


def test_every_registered_task_runs_under_the_one_base_class(tasks):
    assert set(tasks) == {name.value for name in TaskName}
    assert all(isinstance(task, AthenaTask) for task in tasks.values())


@pytest.mark.parametrize("name", [t.value for t in TaskName])
def test_positional_arguments_fail_as_invalid_input_for_every_task(tasks, name):
    with pytest.raises(InvalidInput, match=rf"{name} takes keyword arguments only"):
        tasks[name]("junk", 42)


@pytest.mark.parametrize("name", [t.value for t in TaskName])
def test_an_unknown_keyword_fails_as_invalid_input_for_every_task(tasks, name):
    with pytest.raises(InvalidInput, match="colour"):
        tasks[name](colour="blue")


def test_a_soft_time_limit_becomes_server_timeout(tasks):
    answer_with(raising(SoftTimeLimitExceeded()))
    with pytest.raises(ServerTimeout, match="athena.embed ran past its soft time limit"):
        tasks["athena.embed"](text="slow")


def test_a_lost_connection_becomes_server_unavailable(tasks):
    answer_with(raising(ConnectionResetError("reset by peer")))
    with pytest.raises(ServerUnavailable, match="ConnectionResetError: reset by peer"):
        tasks["athena.embed"](text="a")


def test_any_other_foreign_error_becomes_internal_error_naming_it(tasks):
    answer_with(raising(KeyError("surprise")))
    with pytest.raises(InternalError, match="athena.embed failed unexpectedly \\(KeyError"):
        tasks["athena.embed"](text="a")


def test_failures_and_health_checks_are_recorded_like_any_call(tasks, metrics):
    answer_with(raising(KeyError("surprise")))
    with pytest.raises(InternalError):
        tasks["athena.embed"](text="a")
    with pytest.raises(InvalidInput):
        tasks["athena.embed"]("positional")
    assert metrics.stats("athena.embed").failures == 2
    answer_with(lambda request: httpx.Response(503))
    assert tasks["athena.health.embeddings"]() == {"ready": False, "detail": "loading model (503)", "model": None, "profile": None}
    assert metrics.stats("athena.health.embeddings").success == 1


def test_an_unavailable_server_outside_a_worker_fails_at_once_naming_the_budget(tasks):
    answer_with(lambda request: httpx.Response(503))
    with pytest.raises(ServerUnavailable, match=r"gave up after \d+ s and 1 tries .*ATHENA_EMBED_RETRY_BUDGET_S"):
        tasks["athena.embed"](text="a")


@pytest.mark.parametrize("payload, problem", [
    ({"text": "\x00"}, "no visible character"),
    ({"text": "\ud800"}, "lone UTF-16 surrogate"),
    ({"text": "x" * 200_001}, "ATHENA_MAX_EMBED_TEXT_CHARS"),
])
def test_text_no_server_could_take_is_invalid_input(tasks, payload, problem):
    with pytest.raises(InvalidInput, match=problem):
        tasks["athena.embed"](**payload)


def test_a_not_a_number_is_invalid_input(tasks):
    with pytest.raises(InvalidInput, match="finite number"):
        tasks["athena.reason"](prompt="why?", temperature=float("nan"))


def answer_with_words() -> None:
    answer_with(WordServer(64))


# --- the call is the base's: the body does its work, the base times and records it ---


def test_every_task_body_takes_its_request_alone(tasks):
    for name, task in tasks.items():
        parameters = [p for p in inspect.signature(task.run).parameters.values() if p.name != "self"]
        assert len(parameters) == 1, f"{name} takes {[p.name for p in parameters]}"
        assert task.request_model.__name__ in str(parameters[0].annotation), name


def test_a_result_is_timed_by_the_base_from_what_the_body_knows(tasks):
    answer_with_words()
    embed = tasks["athena.embed"]
    embed.push_request(id="t1", called_directly=False, delivery_info={}, **{ENQUEUED_AT_HEADER: time.time() - 0.5})
    try:
        timing = embed(text="alpha")["timing"]
    finally:
        embed.pop_request()
    assert (timing["task"], timing["queue"], timing["model"]) == ("athena.embed", "embeddings", "fake")
    assert timing["server"]["prompt_tokens"] == 1
    assert 500 <= timing["queue_wait_ms"] < 5000
    assert timing["started_at"] <= timing["finished_at"] and timing["run_ms"] >= 0


def test_the_start_of_a_stored_result_is_its_timing_so_flower_shows_it(tasks):
    answer_with_words()
    embed = tasks["athena.embed"]
    stored = embed(text="alpha " * 40)
    # Flower's result column: Celery's saferepr of the stored result, cut at the task's limit.
    shown = saferepr(stored, embed.resultrepr_maxsize)
    assert list(stored)[0] == "timing" and list(stored["timing"])[:3] == ["queue_wait_ms", "run_ms", "server"]
    assert "'run_ms'" in shown and "'prompt_tokens'" in shown and "'embedding'" not in shown
    assert EmbeddingResult.model_validate(stored).dimension == len(EmbeddingResult.model_validate(stored).embedding) == 384


def test_task_timing_outside_a_running_task_says_so():
    with pytest.raises(RuntimeError, match="no task is running here"):
        task_timing("m")


def test_the_running_clock_is_the_calls_alone_and_gone_once_it_ends(tasks):
    answer_with_words()
    tasks["athena.embed"](text="alpha")
    with pytest.raises(RuntimeError):
        running_clock()


def test_a_workers_call_is_recorded_once_its_result_is_stored(tasks, metrics):
    answer_with_words()
    embed = tasks["athena.embed"]
    embed.push_request(id="t1", called_directly=False, delivery_info={})
    try:
        embed(text="alpha")
        assert "athena.embed" not in metrics.kinds()
        embed.after_return("SUCCESS", None, "t1", (), {}, None)
    finally:
        embed.pop_request()
    assert metrics.stats("athena.embed").success == 1


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def record(self, kind: str, **figures) -> None:
        self.records.append((kind, figures))


def test_the_base_records_into_any_metrics_sink(tasks):
    sink = RecordingSink()
    seams.use_metrics(sink)
    answer_with_words()
    tasks["athena.embed"](text="alpha")
    ((kind, figures),) = sink.records
    assert kind == "athena.embed" and figures["ok"] and figures["prompt_tokens"] == 1
    assert figures["samples"] == {"dimension": 384} and figures["totals"] == {}


def test_the_metrics_store_is_a_metrics_sink():
    assert inspect.signature(MetricsStore.record) == inspect.signature(MetricsSink.record)


def test_outcomes_are_one_str_enum():
    assert [o.value for o in Outcome] == ["success", "failure", "retrying", "handed over"]
    assert Outcome.SUCCESS == "success"
