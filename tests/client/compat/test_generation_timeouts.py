"""A generation's time in the queue is not the model's: the reasoning task stores a
STARTED state, the result waiter notes it (tests/client/test_result_waiter_integration.py),
and LocalLLMClient bounds the wait for a worker and the generation apart, against a
real reasoning worker of its own in front of the session's llama-server (SmolLM2, one slot)."""

from __future__ import annotations

import asyncio
import importlib
import re
import threading
import time

import pytest

from athena_client.client import AthenaClient
from athena_client.compat import connection
from athena_client.compat.llm_client import LocalLLMClient
from athena_client.contract.errors import Cancelled, ServerTimeout
from athena_client.contract.routes import Queue, TaskName
from tests.harness import endless_generation


def test_only_the_reasoning_task_stores_a_started_state():
    from athena_inference.config.celery import TASK_MODULES, app

    for module in TASK_MODULES:
        importlib.import_module(module)
    ours = {name: task for name, task in app.tasks.items() if name.startswith("athena.")}
    assert {name for name, task in ours.items() if task.track_started} == {TaskName.REASON.value}


# --- LocalLLMClient against a real reasoning worker with one slot ---

# A generation under a grammar with no end holds the worker's one slot until it
# is cancelled: as long as a test needs, on a fast machine or a slow one.
BLOCKER = endless_generation("Say one word, again and again.")


@pytest.fixture(scope="module")
def reasoning(stack):
    """One reasoning worker of its own (one slot, as the session's reasoning server has), on Redis databases of its own."""
    with stack.side_lane(Queue.REASONING, "timeouts", ATHENA_REASONING_SLOTS="1") as side:
        with AthenaClient(side.env["ATHENA_BROKER_URL"], side.env["ATHENA_RESULT_BACKEND"]) as client:
            yield side.env, client


@pytest.fixture
def athena(reasoning, monkeypatch):
    """This process configured as Athena is, against the worker above: LocalLLMClient(**options)."""
    env, _ = reasoning
    monkeypatch.setenv("ATHENA_BROKER_URL", env["ATHENA_BROKER_URL"])
    monkeypatch.setenv("ATHENA_RESULT_BACKEND", env["ATHENA_RESULT_BACKEND"])
    monkeypatch.setattr(connection, "_clients", {})
    yield LocalLLMClient
    for client in connection._clients.values():
        client.close()


@pytest.fixture
def busy_worker(reasoning):
    """The worker's one slot taken by an endless generation; yields a function that cancels it, once it has started."""
    _, client = reasoning
    waiter = client.transport.waiter
    task_id = client.submit(TaskName.REASON, BLOCKER)
    ticket = waiter.expect(task_id)
    try:
        assert waiter.wait_started(ticket, 120), "the blocking generation never started"
    finally:
        waiter.release(ticket)
    yield lambda: client.cancel(task_id)
    client.cancel(task_id)
    with pytest.raises(Cancelled):
        client.result(TaskName.REASON, task_id, timeout=60)


def test_time_in_the_queue_behind_another_generation_is_not_charged_to_this_one(athena, busy_worker):
    # Three seconds for the generation itself, which waits longer than that for the slot.
    client = athena(timeout_seconds=3.0, min_tokens_per_second=1000.0)
    assert client.generation_timeout(8) == 3.0
    threading.Timer(4.0, busy_worker).start()
    began = time.monotonic()
    out = asyncio.run(client.reason("Say hello.", max_tokens=8, temperature=0.0))
    assert out.text and 0 < out.tokens <= 8
    assert time.monotonic() - began > 4.0, "the generation did not wait behind the other: the test proves nothing"


def test_a_generation_no_worker_takes_in_time_ends_with_a_clear_error_and_never_runs(athena, busy_worker, reasoning):
    _, sender = reasoning
    client = athena(queue_timeout_seconds=1.0)
    began = time.monotonic()
    with pytest.raises(ServerTimeout, match="waited 1 s in the reasoning queue and no worker took it, so it was revoked") as caught:
        asyncio.run(client.reason("Say hello.", max_tokens=8))
    assert time.monotonic() - began < 10
    task_id = re.search(r"athena\.reason (\S+) waited", str(caught.value)).group(1)
    # Once the slot is free the worker drops it, without running it.
    busy_worker()
    with pytest.raises(Cancelled, match="cancelled before it started; no worker ran it"):
        sender.result(TaskName.REASON, task_id, timeout=300)


def test_a_started_generation_is_still_bounded_by_its_own_budget(athena, reasoning):
    client = athena(timeout_seconds=0.5, min_tokens_per_second=1e6)
    with pytest.raises(ServerTimeout, match=r"started but gave no answer within 0\.5 s"):
        asyncio.run(client.consolidate_with_reasoning("Event 1:\n  Content: the nightly export failed and nobody noticed for a week"))
