"""Faults a production day brings, against real processes: a model server killed and
brought back while tasks are in flight and queued, a server down past the budget, pool
processes killed while they run tasks (a consolidation's stage among them), and a task
whose worker dies every time it runs it.

Each test runs its own workers (and, where it kills one, its own server) on Redis
databases of their own (`Stack.isolated_env`), so the session's stack is never touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis

from athena_client.client import AthenaClient
from athena_client.contract.consolidation import ConsolidateRequest
from athena_client.contract.errors import PoisonMessage, ServerUnavailable
from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import Queue, TaskName
from athena_inference.workers.circuit_breaker import CircuitBreaker
from athena_inference.workers.deliveries import DeliveryCounter
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS
from tests.harness import Proc, endless_generation, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def restarting(stack):
    """An embeddings server of its own, and a worker in front of it with the default retry budget."""
    with stack.side_lane(Queue.EMBEDDINGS, "restart", own_server=True) as side:
        env = side.env
        client = AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=180)
        yield client, side.server, env["LLAMACPP_EMBEDDINGS_URL"], env
        client.close()
        # The copy the test started again on the same address.
        for proc in stack.procs:
            if proc.name == side.server.name:
                proc.stop()


def test_tasks_in_flight_and_queued_across_a_server_restart_all_succeed(restarting, stack):
    client, server, url, env = restarting
    breaker = CircuitBreaker(redis.Redis.from_url(env["ATHENA_CACHE_URL"]), url)
    assert client.embed("before the restart").dimension == 384
    server.stop(signal.SIGKILL)
    sent: list[str] = []

    def send_during_the_outage():
        for i in range(12):
            sent.append(client.submit(TaskName.EMBED, EmbedRequest(text=f"memory {i} sent while the server is down")))
            time.sleep(0.5)

    sender = threading.Thread(target=send_during_the_outage)
    sender.start()
    # The failures open the server's breaker, shared by every worker process.
    wait_for(lambda: breaker.state() is not None, "the breaker to open", 15)
    # Down for 6 s or more: a dozen tries of each task (backoff capped at 1 s here), well inside the 90 s budget.
    time.sleep(6)
    stack.llama("embeddings", url, env)
    sender.join()
    results = [client.result(TaskName.EMBED, task_id, timeout=180) for task_id in sent]
    assert len(results) == 12 and all(r.dimension == 384 for r in results)
    # The server that came back is used again: the first call after a cooldown probed it and closed the breaker.
    assert breaker.state() is None
    assert client.embed("after the restart").dimension == 384


def test_a_server_down_past_the_budget_fails_naming_the_server_and_how_long(stack):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    env = stack.isolated_env(LLAMACPP_EMBEDDINGS_URL=url, ATHENA_EMBED_RETRY_BUDGET_S="4", ATHENA_RETRY_ATTEMPTS="1")
    worker = stack.worker("embeddings", "budget", env)
    try:
        with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=60) as client:
            stack.wait_for_workers(client, {"embeddings@budget"})
            started = time.monotonic()
            with pytest.raises(ServerUnavailable, match=rf"{url}/v1/embeddings.* gave up after \d+ s and \d+ tries .*ATHENA_EMBED_RETRY_BUDGET_S"):
                client.embed("nobody is there")
        assert 2 < time.monotonic() - started < 30
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def dying(stack):
    """Prefork reasoning, background reasoning and consolidation workers of their own, in
    front of the session's reasoning server, whose pool processes get killed."""
    env = stack.isolated_env()
    workers = {queue: stack.worker(queue, "dying", env) for queue in ("reasoning", "reasoning_background", "consolidation")}
    client = AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=300)
    stack.wait_for_workers(client, {f"{queue}@dying" for queue in workers})
    yield client, workers, DeliveryCounter(redis.Redis.from_url(env["ATHENA_CACHE_URL"]), ttl_s=60)
    client.close()
    for worker in workers.values():
        worker.stop()


def deliveries(worker: Proc, task: TaskName, task_id: str) -> int:
    """How many times `worker` was handed `task_id` (its log says so at each delivery)."""
    return worker.log_path.read_text(errors="replace").count(f"{task.value}[{task_id}] received")


def test_tasks_whose_pool_process_is_killed_while_they_run_are_run_again_and_none_is_lost(dying):
    client, workers, _ = dying
    # Exactly 80 tokens each (a grammar with no end): seconds on the small model, so each is caught running.
    generations = [
        client.submit(TaskName.REASON, ReasonRequest(prompt=f"Say one word for memory {i}.", max_tokens=80, grammar='root ::= "lighthouse " root'))
        for i in range(2)
    ]
    # A consolidation, whose reasoning stage (the same task id, replaced from stage to stage) is killed too.
    consolidation = client.submit(
        TaskName.CONSOLIDATE, ConsolidateRequest(events=INCIDENT_EVENTS[:4], options={"max_patterns": 2, "temperature": 0.0})
    )
    killed: set[int] = set()
    # Each is killed once while it runs, with the others queued behind it or run again meanwhile;
    # a third death would make it a poison message (the next test).
    # The consolidation's stage first: it runs beside the generations (a worker of its own), and could end before them.
    for task, task_id in [(TaskName.CONSOLIDATE_REASON, consolidation), *((TaskName.REASON, g) for g in generations)]:
        pid = wait_running(client, task_id, killed, task)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    assert [client.result(TaskName.REASON, task_id).tokens for task_id in generations] == [80] * 2
    patterns = client.result(TaskName.CONSOLIDATE, consolidation).patterns
    assert patterns and all(set(p.source_events) <= {e.id for e in INCIDENT_EVENTS} for p in patterns)
    # Each was run again after its process died: delivered twice, not lost and not duplicated.
    assert [deliveries(workers["reasoning"], TaskName.REASON, task_id) for task_id in generations] == [2] * 2
    assert deliveries(workers["reasoning_background"], TaskName.CONSOLIDATE_REASON, consolidation) == 2


def test_a_task_whose_worker_dies_every_time_fails_typed_after_three_deliveries(dying):
    client, _, counter = dying
    task_id = client.submit(TaskName.REASON, endless_generation("Write a long story about a lighthouse."))
    killed: set[int] = set()
    for delivery in range(1, 4):
        pid = wait_running(client, task_id, killed)
        # Listed as active is not yet running: a process killed before the task counted its delivery
        # would leave the message one delivery short of poison, and the generation would run to the end.
        wait_for(lambda: counter.so_far(task_id, 0) >= delivery, f"delivery {delivery} of {task_id} to be counted", 30)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    with pytest.raises(PoisonMessage, match="delivered 4 times.*ATHENA_MAX_DELIVERIES=3"):
        client.result(TaskName.REASON, task_id, timeout=120)


def wait_running(client: AthenaClient, task_id: str, killed: set[int], name: TaskName = TaskName.REASON, timeout: float = 120) -> int:
    """The pid of the worker process running `task_id` (as task `name`) now, not one already killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # All three workers answer at once: no waiting out the timeout.
        for tasks in (client.app.control.inspect(timeout=1.0, limit=3).active() or {}).values():
            for task in tasks:
                if task["id"] == task_id and task["name"] == name.value and task.get("worker_pid") not in killed | {None}:
                    return task["worker_pid"]
        time.sleep(0.05)
    raise AssertionError(f"{name.value} {task_id} never ran")
