"""Faults a production day brings, against real processes: a model server killed and
brought back while tasks are in flight and queued, a server down past the budget, and
a task whose worker dies every time it runs it.

Each test runs its own workers (and, where it kills one, its own server) on Redis
databases of its own, so the session's stack is never touched.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from athena_client.client import AthenaClient
from athena_client.errors import PoisonMessage, ServerUnavailable
from athena_client.payloads import EmbedRequest
from athena_client.routes import TaskName
from tests.harness import endless_generation, free_port, wait_for

pytestmark = pytest.mark.integration


def side_env(stack, db: int, **extra: str) -> dict[str, str]:
    redis_url = stack.env["ATHENA_BROKER_URL"].rsplit("/", 1)[0]
    return {
        "ATHENA_BROKER_URL": f"{redis_url}/{db}",
        "ATHENA_RESULT_BACKEND": f"{redis_url}/{db + 1}",
        "ATHENA_METRICS_URL": f"{redis_url}/{db + 2}",
        "ATHENA_CACHE_URL": f"{redis_url}/{db + 2}",
        **extra,
    }


def worker_online(client: AthenaClient, node: str) -> None:
    wait_for(lambda: any(node in name for reply in client.app.control.ping(timeout=1.0) or [] for name in reply), node, 60)


@pytest.fixture(scope="module")
def restarting(stack):
    """An embeddings server of its own, and a worker in front of it with the default retry budget."""
    url = f"http://127.0.0.1:{free_port()}"
    env = side_env(stack, 5, LLAMACPP_EMBEDDINGS_URL=url)
    server = stack.llama("embeddings", url, env)
    stack.worker("embeddings", "restart", env)
    client = AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=180)
    worker_online(client, "embeddings@restart")
    yield client, server, url, env
    client.close()


def test_tasks_in_flight_and_queued_across_a_server_restart_all_succeed(restarting, stack):
    client, server, url, env = restarting
    assert client.embed("before the restart").dimension == 384
    server.stop(signal.SIGKILL)
    sent: list[str] = []

    def send_during_the_outage():
        for i in range(20):
            sent.append(client.submit(TaskName.EMBED, EmbedRequest(text=f"memory {i} sent while the server is down")))
            time.sleep(0.5)

    sender = threading.Thread(target=send_during_the_outage)
    sender.start()
    time.sleep(15)  # down for 15 s; the budget is 90 s
    stack.llama("embeddings", url, env)
    sender.join()
    results = [client.result(TaskName.EMBED, task_id, timeout=180) for task_id in sent]
    assert len(results) == 20 and all(r.dimension == 384 for r in results)


def test_a_server_down_past_the_budget_fails_naming_the_server_and_how_long(stack):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    env = side_env(stack, 8, LLAMACPP_EMBEDDINGS_URL=url, ATHENA_EMBED_RETRY_BUDGET_S="4", ATHENA_RETRY_ATTEMPTS="1")
    stack.worker("embeddings", "budget", env)
    with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=60) as client:
        worker_online(client, "embeddings@budget")
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match=rf"{url}/v1/embeddings.* gave up after \d+ s and \d+ tries .*ATHENA_EMBED_RETRY_BUDGET_S"):
            client.embed("nobody is there")
    assert 2 < time.monotonic() - started < 30


def test_a_task_whose_worker_dies_every_time_fails_typed_after_three_deliveries(stack):
    env = side_env(stack, 11)
    stack.worker("reasoning", "poison", env)
    with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=120) as client:
        worker_online(client, "reasoning@poison")
        task_id = client.submit(TaskName.REASON, endless_generation("Write a long story about a lighthouse."))
        killed: set[int] = set()
        for _ in range(3):
            pid = wait_running(client, task_id, killed)
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        with pytest.raises(PoisonMessage, match="delivered 4 times.*ATHENA_MAX_DELIVERIES=3"):
            client.result(TaskName.REASON, task_id, timeout=120)


def wait_running(client: AthenaClient, task_id: str, killed: set[int], timeout: float = 60) -> int:
    """The pid of the worker process running `task_id` now (not one already killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tasks in (client.app.control.inspect(timeout=1.0).active() or {}).values():
            for task in tasks:
                if task["id"] == task_id and task.get("worker_pid") and task["worker_pid"] not in killed:
                    return task["worker_pid"]
        time.sleep(0.1)
    raise AssertionError(f"{task_id} never ran")
