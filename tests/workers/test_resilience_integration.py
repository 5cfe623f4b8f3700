"""A worker whose server stops, and comes back; a message the worker must refuse.

These tests stop servers, so they run their own embeddings server and worker
on their own port and their own Redis databases.
"""

from __future__ import annotations

import pickle
import time

import pytest
import redis
from kombu import Connection

from athena_client.errors import ServerUnavailable
from athena_client.payloads import EmbedRequest
from athena_client.routes import TaskName
from athena_client.sender import TaskSender
from athena_inference.workers.circuit_breaker import CircuitBreaker
from tests.harness import free_port, wait_for


@pytest.fixture(scope="module")
def outage(stack):
    redis_url = stack.env["ATHENA_BROKER_URL"].rsplit("/", 1)[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "ATHENA_BROKER_URL": f"{redis_url}/2",
        "ATHENA_RESULT_BACKEND": f"{redis_url}/3",
        # Metrics, caches and breakers of their own, away from the main stack's.
        "ATHENA_METRICS_URL": f"{redis_url}/4",
        "ATHENA_CACHE_URL": f"{redis_url}/4",
        "LLAMACPP_EMBEDDINGS_URL": url,
        # These tests are about the HTTP call's own retries: no waiting it out at the task level.
        "ATHENA_EMBED_RETRY_BUDGET_S": "0",
    }
    server = stack.llama("embeddings", url, env)
    stack.worker("embeddings", "outage", env)
    sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
    wait_for(lambda: sender.app.control.ping(timeout=1.0), "outage worker", 60)
    yield sender, server, url, env
    sender.close()


def test_stopped_server_gives_retries_then_a_clear_failure(outage):
    sender, server, url, _ = outage
    assert sender.call(TaskName.EMBED, EmbedRequest(text="before the outage")).dimension == 384
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"after 4 attempts"):
        sender.call(TaskName.EMBED, EmbedRequest(text="during the outage"), timeout=60)
    # Backoff 0.2 + 0.4 + 0.8 s between the four attempts (ATHENA_RETRY_* in conftest).
    assert time.monotonic() - started >= 1.4


def test_server_that_comes_back_is_used_again(outage, stack):
    sender, server, url, env = outage
    if server.popen.poll() is None:
        server.stop()
    stack.llama("embeddings", url, env)
    # With no task-level retries, the call must come after the breaker's cooldown
    # (the failures above opened it); the first call after it probes and closes it.
    breaker = CircuitBreaker(redis.Redis.from_url(env["ATHENA_CACHE_URL"]), url)
    wait_for(lambda: not breaker.state(), "the breaker's cooldown", 30)
    out = sender.call(TaskName.EMBED, EmbedRequest(text="after the outage"), timeout=60)
    assert out.dimension == 384


def test_pickled_message_is_refused_and_worker_keeps_serving(sender, stack):
    task_id = "pickled-0001"
    with Connection(stack.env["ATHENA_BROKER_URL"]) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            pickle.dumps(((), {"text": "never run"}, {})),
            routing_key="embeddings",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": TaskName.EMBED.value, "id": task_id, "root_id": task_id, "parent_id": None, "group": None},
        )
    # The worker stays up and keeps serving after the message it refused.
    assert sender.call(TaskName.EMBED, EmbedRequest(text="after the pickle")).dimension == 384
    assert sender.app.AsyncResult(task_id).state == "PENDING"
    log = next(p for p in stack.procs if p.name == "embeddings-worker-main").log_path.read_text()
    assert "ContentDisallowed" in log or "Refusing to deserialize" in log
