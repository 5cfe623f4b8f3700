"""A generation's time in the queue is not the model's: the reasoning task stores a
STARTED state, the result waiter notes it, and LocalLLMClient bounds the wait for
a worker and the generation apart. Against a real redis-server, and against a
real reasoning worker in front of a real llama-server (SmolLM2, one slot)."""

from __future__ import annotations

import asyncio
import importlib
import re
import threading
import time
import uuid

import pytest
from celery import states

from athena_client.client import AthenaClient
from athena_client.compat import connection
from athena_client.compat.llm_client import LocalLLMClient
from athena_client.errors import AthenaError, ServerTimeout
from athena_client.payloads import ReasonRequest
from athena_client.result_waiter import ResultWaiter, WaitTimedOut
from athena_client.routes import TaskName
from tests.client.test_result_waiter_integration import RedisServer
from tests.harness import Stack, local_stack_env, redis_port, wait_for


def test_only_the_reasoning_task_stores_a_started_state():
    from athena_inference.config.celery import TASK_MODULES, app

    for module in TASK_MODULES:
        importlib.import_module(module)
    ours = {name: task for name, task in app.tasks.items() if name.startswith("athena.")}
    assert {name for name, task in ours.items() if task.track_started} == {TaskName.REASON.value}


# --- the result waiter and the STARTED state, against a real redis-server ---


@pytest.fixture
def backend(tmp_path):
    from celery import Celery

    server = RedisServer(tmp_path)
    app = Celery("started-test", backend=f"redis://127.0.0.1:{server.port}/1", set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"], result_accept_content=["json"])
    yield app.backend
    app.close()
    server.stop()


@pytest.fixture
def waiter(backend):
    made = ResultWaiter.for_backend(backend)
    yield made
    made.close()


def started(backend, task_id: str) -> None:
    """What a worker stores before it runs a task declared with track_started."""
    backend.store_result(task_id, {"pid": 1, "hostname": "reasoning@test"}, states.STARTED)


@pytest.mark.integration
def test_a_started_state_is_noted_and_the_wait_goes_on_for_the_result(backend, waiter):
    task_id = str(uuid.uuid4())
    ticket = waiter.expect(task_id)
    threading.Timer(0.2, started, (backend, task_id)).start()
    assert waiter.wait_started(ticket, timeout=5)
    assert not ticket.done.is_set()
    threading.Timer(0.2, backend.store_result, (task_id, "done", states.SUCCESS)).start()
    assert waiter.wait(ticket, timeout=5)["result"] == "done"


@pytest.mark.integration
def test_a_started_state_stored_before_the_wait_is_read(backend, waiter):
    task_id = str(uuid.uuid4())
    started(backend, task_id)
    ticket = waiter.expect(task_id)
    assert waiter.wait_started(ticket, timeout=5)
    with pytest.raises(WaitTimedOut):
        waiter.wait(ticket, timeout=0.3)


@pytest.mark.integration
def test_a_finished_task_counts_as_started_though_it_stored_no_started_state(backend, waiter):
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, "done", states.SUCCESS)
    assert waiter.wait_started(waiter.expect(task_id), timeout=5)


@pytest.mark.integration
def test_a_task_that_never_starts_is_reported_after_the_time_given(waiter):
    ticket = waiter.expect(str(uuid.uuid4()))
    began = time.monotonic()
    assert not waiter.wait_started(ticket, timeout=0.4)
    assert time.monotonic() - began >= 0.4
    waiter.release(ticket)


# --- LocalLLMClient against a real reasoning worker with one slot ---

# A generation under a grammar with no end runs until max_tokens: it holds the
# worker's one slot for 6 s or more (SmolLM2 makes at most 80 tokens/s on one
# thread), longer than the 3 s the generation behind it is given.
BLOCKER = ReasonRequest(prompt="Say one word, again and again.", max_tokens=500, grammar='root ::= "lighthouse " root')


@pytest.fixture(scope="module")
def reasoning(provisioned, tmp_path_factory):
    """Redis, the reasoning llama-server and one reasoning worker (one slot), on free ports."""
    stack = Stack(tmp_path_factory.mktemp("generation-timeouts"), local_stack_env(LLAMACPP_N_THREADS="1", ATHENA_REASONING_SLOTS="1"))
    try:
        stack.redis(redis_port(stack.env))
        stack.llama("reasoning", stack.env["LLAMACPP_REASONING_URL"])
        stack.worker("reasoning", "timeouts")
        client = AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"])
        wait_for(lambda: any("reasoning@timeouts" in reply for reply in client.app.control.ping(timeout=1.0) or []), "reasoning worker", 60)
        yield stack, client
        client.close()
    finally:
        stack.stop_all()


@pytest.fixture
def athena(reasoning, monkeypatch):
    """This process configured as Athena is, against the test stack: LocalLLMClient(**options)."""
    stack, _ = reasoning
    monkeypatch.setenv("ATHENA_BROKER_URL", stack.env["ATHENA_BROKER_URL"])
    monkeypatch.setenv("ATHENA_RESULT_BACKEND", stack.env["ATHENA_RESULT_BACKEND"])
    monkeypatch.setattr(connection, "_clients", {})
    yield LocalLLMClient
    for client in connection._clients.values():
        client.close()


@pytest.fixture
def busy_worker(reasoning):
    """The worker's one slot taken by a long generation; yields its task id once it has started."""
    _, client = reasoning
    waiter = client.transport.waiter
    task_id = client.submit(TaskName.REASON, BLOCKER)
    ticket = waiter.expect(task_id)
    try:
        assert waiter.wait_started(ticket, 120), "the blocking generation never started"
    finally:
        waiter.release(ticket)
    yield task_id
    assert client.result(TaskName.REASON, task_id, timeout=300).tokens == BLOCKER.max_tokens


def test_time_in_the_queue_behind_another_generation_is_not_charged_to_this_one(athena, busy_worker):
    # Three seconds for the generation itself, which waits longer than that for the slot.
    client = athena(timeout_seconds=3.0, min_tokens_per_second=1000.0)
    assert client.generation_timeout(8) == 3.0
    began = time.monotonic()
    out = asyncio.run(client.reason("Say hello.", max_tokens=8, temperature=0.0))
    assert out.text and 0 < out.tokens <= 8
    assert time.monotonic() - began > 3.0, "the generation did not wait behind the other: the test proves nothing"


def test_a_generation_no_worker_takes_in_time_ends_with_a_clear_error_and_never_runs(athena, busy_worker, reasoning):
    _, sender = reasoning
    client = athena(queue_timeout_seconds=1.0)
    began = time.monotonic()
    with pytest.raises(ServerTimeout, match="waited 1 s in the reasoning queue and no worker took it, so it was revoked") as caught:
        asyncio.run(client.reason("Say hello.", max_tokens=8))
    assert time.monotonic() - began < 10
    task_id = re.search(r"athena\.reason (\S+) waited", str(caught.value)).group(1)
    # Once the slot is free the worker drops it, without running it.
    with pytest.raises(AthenaError, match="Revoked"):
        sender.result(TaskName.REASON, task_id, timeout=300)


def test_a_started_generation_is_still_bounded_by_its_own_budget(athena, reasoning):
    client = athena(timeout_seconds=0.5, min_tokens_per_second=1e6)
    with pytest.raises(ServerTimeout, match=r"started but gave no answer within 0\.5 s"):
        asyncio.run(client.consolidate_with_reasoning("Event 1:\n  Content: the nightly export failed and nobody noticed for a week"))
