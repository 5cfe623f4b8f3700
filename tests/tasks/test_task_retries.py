"""Who retries what (tasks/base.py's docstring), checked: the seam absorbs a blip, the
task waits out an outage under its lane's budget, and nothing else retries."""

from __future__ import annotations

import contextlib
import importlib
import time

import fakeredis
import httpx
import pytest
from celery.exceptions import Reject, Retry

from athena_client.contract.errors import InvalidInput, ServerUnavailable
from athena_client.contract.payloads import CompressorStatus
from athena_client.contract.routes import Queue, TaskName
from athena_inference.config.celery import TASK_MODULES, app
from athena_inference.config.registry import lane_of
from athena_inference.config.retry import RetryPolicy
from athena_inference.config.settings import env_name, get_settings
from athena_inference.tasks import seams
from athena_inference.tasks.base import FIRST_TRY_HEADER
from athena_inference.workers.circuit_breaker import CircuitBreaker
from athena_inference.workers.compressor import Compressor
from athena_inference.workers.deliveries import DeliveryCounter
from athena_inference.workers.llama_server import LlamaServer
from tests.embedding_fakes import WordServer


@pytest.fixture
def tasks(metrics, monkeypatch):
    for module in TASK_MODULES:
        importlib.import_module(module)
    # A worker's first delivery costs no Redis round trip, but the counter must exist.
    monkeypatch.setattr(seams, "_deliveries", DeliveryCounter(fakeredis.FakeRedis(), ttl_s=60))
    return app.tasks


@contextlib.contextmanager
def in_a_worker(task, *, retries: int = 0, first_try_at: float | None = None):
    """The task as a worker runs it: an id, a delivery, its retries so far. Eager, so a
    retry is raised without a broker to publish it to."""
    request = dict(id="task-1", retries=retries, is_eager=True, called_directly=False, delivery_info={})
    if first_try_at is not None:
        request[FIRST_TRY_HEADER] = first_try_at
    task.push_request(**request)
    try:
        yield task
    finally:
        task.pop_request()


def serve(queue: Queue, handler, *, attempts: int = 1, breaker: CircuitBreaker | None = None) -> None:
    server = LlamaServer(
        "http://fake", timeout=httpx.Timeout(1.0), retry=RetryPolicy(attempts=attempts, backoff_s=0, backoff_max_s=0),
        transport=httpx.MockTransport(handler), sleep=lambda s: None, breaker=breaker,
    )
    seams.use_llama(queue, server)


def loading(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503)


def blip_once(then):
    """A server whose first request finds a connection reset, and then answers."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if len(seen) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return then(request)

    return handler


# --- the seam: a blip never reaches the task ---


def test_a_blip_is_absorbed_inside_the_call_and_never_retries_the_task(tasks, metrics):
    serve(Queue.EMBEDDINGS, blip_once(WordServer(64)), attempts=2)
    with in_a_worker(tasks["athena.embed"]) as embed:
        assert embed(text="alpha")["dimension"] == 384


def test_a_blip_does_not_open_the_breaker_every_worker_process_shares():
    shared = fakeredis.FakeRedis()
    breaker = CircuitBreaker(shared, "http://fake")
    server = LlamaServer(
        "http://fake", timeout=httpx.Timeout(1.0), retry=RetryPolicy(attempts=2, backoff_s=0, backoff_max_s=0),
        transport=httpx.MockTransport(blip_once(WordServer(64))), sleep=lambda s: None, breaker=breaker,
    )
    server.embed(["alpha"])
    assert breaker.state() is None


# --- the task: an outage waited out under the lane's budget ---


def test_an_unavailable_server_in_a_worker_retries_the_task_with_jittered_backoff(tasks):
    serve(Queue.EMBEDDINGS, loading)
    settings = get_settings()
    with in_a_worker(tasks["athena.embed"], retries=2) as embed, pytest.raises(Retry) as retry:
        embed(text="a")
    assert 0 <= retry.value.when <= min(settings.task_retry_backoff_max_s, settings.task_retry_backoff_s * 4)


def test_the_first_try_is_carried_across_retries(tasks):
    serve(Queue.REASONING, loading)
    first = time.time() - 30
    with in_a_worker(tasks["athena.reason"], retries=3, first_try_at=first) as reason, pytest.raises(Retry) as retry:
        reason(prompt="why?")
    assert retry.value.sig.options["headers"] == {FIRST_TRY_HEADER: first}


def test_a_first_try_stamps_its_own_start_for_the_retries_to_carry(tasks):
    serve(Queue.REASONING, loading)
    before = time.time()
    with in_a_worker(tasks["athena.reason"]) as reason, pytest.raises(Retry) as retry:
        reason(prompt="why?")
    assert before <= retry.value.sig.options["headers"][FIRST_TRY_HEADER] <= time.time()


def test_a_retry_waits_at_least_as_long_as_the_breaker_stays_open(tasks):
    shared = fakeredis.FakeRedis()
    breaker = CircuitBreaker(shared, "http://fake", cooldown_s=7.0, max_cooldown_s=7.0)
    serve(Queue.EMBEDDINGS, loading, breaker=breaker)
    with in_a_worker(tasks["athena.embed"]) as embed, pytest.raises(Retry) as retry:
        embed(text="a")
    assert retry.value.when >= 7.0


@pytest.mark.parametrize("task, queue, payload", [
    (TaskName.EMBED, Queue.EMBEDDINGS, {"text": "a"}),
    (TaskName.EMBED_BULK, Queue.EMBEDDINGS_BULK, {"texts": ["a"]}),
    (TaskName.REASON, Queue.REASONING, {"prompt": "why?"}),
])
def test_past_its_lanes_budget_a_task_fails_naming_the_setting_that_sets_it(tasks, task, queue, payload):
    serve(queue, loading)
    budget = lane_of(task).retry_budget_s(get_settings())
    with in_a_worker(tasks[task.value], retries=5, first_try_at=time.time() - budget - 1) as run:
        with pytest.raises(ServerUnavailable) as failed:
            run(**payload)
    setting = env_name(lane_of(task).retry_budget)
    assert f"gave up after {budget + 1:.0f} s and 6 tries of this task (its budget: {budget:g} s, {setting})" in str(failed.value)


def test_a_lane_without_a_budget_fails_at_once_even_in_a_worker(tasks, monkeypatch):
    class Unreachable(Compressor):
        def compress(self, context, **options):
            raise ServerUnavailable("the compressor's device is gone")

    monkeypatch.setattr(seams, "_compressor", Unreachable(CompressorStatus(ready=True, method="llmlingua2", model="m"), len))
    seams._compressor_loaded.set()
    state = dict(options={"compress": True}, event_ids=["e1"], event_text="[e1] x", dropped_event_ids=[], remaining=[], started_at=time.time())
    with in_a_worker(tasks[TaskName.CONSOLIDATE_COMPRESS.value]) as stage, pytest.raises(ServerUnavailable) as failed:
        stage(**state)
    assert "no retry budget: the compression queue calls no model server" in str(failed.value)


def test_a_retry_that_cannot_be_published_fails_the_call_and_is_counted_at_once(tasks, metrics, monkeypatch):
    serve(Queue.EMBEDDINGS, loading)
    embed = tasks["athena.embed"]

    def unpublishable(*args, **kwargs):
        raise Reject("broker gone", requeue=False)

    monkeypatch.setattr(embed, "retry", unpublishable)
    with in_a_worker(embed) as running, pytest.raises(Reject):
        running(text="a")
    # Celery calls no after_return for a rejected task: the base did not wait for one.
    assert metrics.stats("athena.embed").failures == 1


def test_bad_input_is_never_retried_even_in_a_worker(tasks):
    serve(Queue.REASONING, lambda request: httpx.Response(400, json={"error": {"message": "bad grammar"}}))
    with in_a_worker(tasks["athena.reason"]) as reason, pytest.raises(InvalidInput, match="bad grammar"):
        reason(prompt="why?")
