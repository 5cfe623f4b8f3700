"""`athena-inference worker` stops on SIGTERM without losing the task it is running.

Each test starts reasoning workers of its own, on Redis databases of their own, in
front of the session's reasoning server."""

from __future__ import annotations

import os
import signal

import pytest

from athena_client import AthenaClient
from athena_client.contract.payloads import ReasonRequest
from athena_client.contract.routes import TaskName
from tests.harness import Proc, Stack, wait_for

# About 150 generated tokens: a few seconds on the small reasoning model, long enough to be caught running.
LONG_ANSWER = ReasonRequest(prompt="Count from 1 to 300, separated by commas.", max_tokens=150, temperature=0.0)


@pytest.fixture
def reasoning(stack, tmp_path):
    """Where the test's workers run: the session's Redis and reasoning server, databases of the test's own."""
    lane = Stack(tmp_path, dict(stack.env, **stack.isolated_env()))
    client = AthenaClient(lane.env["ATHENA_BROKER_URL"], lane.env["ATHENA_RESULT_BACKEND"], timeout=120)
    try:
        yield lane, client
    finally:
        client.close()
        lane.stop_all()


def started_worker(stack: Stack, client: AthenaClient, node: str) -> Proc:
    worker = stack.worker("reasoning", node)
    stack.wait_for_workers(client, {f"reasoning@{node}"}, timeout=90)
    return worker


def running(worker: Proc, task_id: str) -> bool:
    return f"athena.reason[{task_id}] received" in worker.log_path.read_text(errors="replace")


def started(client: AthenaClient, task_id: str) -> bool:
    """In the pool process, not only received by the main one (athena.reason stores STARTED):
    a task received but not yet handed on is put back at a warm shutdown, not finished."""
    return client.app.backend.get_task_meta(task_id)["status"] == "STARTED"


def test_sigterm_to_the_worker_finishes_the_task_in_flight_before_it_exits(reasoning):
    stack, client = reasoning
    worker = started_worker(stack, client, "warm")
    task_id = client.submit(TaskName.REASON, LONG_ANSWER)
    wait_for(lambda: started(client, task_id), "the task to start", 60, worker)
    # To the worker's main process, as a container runtime sends it to its PID 1.
    os.kill(worker.popen.pid, signal.SIGTERM)
    assert worker.popen.wait(timeout=120) == 0
    assert "succeeded" in worker.log_tail(20) and task_id in worker.log_path.read_text()
    assert client.result(TaskName.REASON, task_id, timeout=5).tokens > 0


def test_sigterm_to_the_workers_whole_group_puts_the_task_back_for_another_worker(reasoning):
    stack, client = reasoning
    first = started_worker(stack, client, "first")
    task_id = client.submit(TaskName.REASON, LONG_ANSWER)
    wait_for(lambda: running(first, task_id), "the task to start", 60, first)
    # To every process of the worker, its pool processes too, as honcho and
    # systemd's default KillMode send it: the process running the task dies.
    os.killpg(first.popen.pid, signal.SIGTERM)
    first.popen.wait(timeout=120)
    second = started_worker(stack, client, "second")
    assert client.result(TaskName.REASON, task_id, timeout=120).tokens > 0
    assert running(second, task_id)
