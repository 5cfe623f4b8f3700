"""The seam in front of a server that stops: it retries the call, then fails clearly.

This test stops a server, so it runs its own embeddings server and worker, on
its own port and Redis databases of their own. A server that comes back is
used again: tests/tasks/test_faults_integration.py restarts one under load.
"""

from __future__ import annotations

import time

import pytest

from athena_client.contract.errors import ServerUnavailable
from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender
from tests.harness import free_port


@pytest.fixture(scope="module")
def outage(stack):
    url = f"http://127.0.0.1:{free_port()}"
    # About the HTTP call's own retries: no waiting it out at the task level.
    env = stack.isolated_env(LLAMACPP_EMBEDDINGS_URL=url, ATHENA_EMBED_RETRY_BUDGET_S="0")
    server = stack.llama("embeddings", url, env)
    worker = stack.worker("embeddings", "outage", env)
    sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
    stack.wait_for_workers(sender, {"embeddings@outage"})
    yield sender, server
    sender.close()
    worker.stop()
    server.stop()


def test_stopped_server_gives_retries_then_a_clear_failure(outage):
    sender, server = outage
    assert sender.call(TaskName.EMBED, EmbedRequest(text="before the outage")).dimension == 384
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"after 4 attempts"):
        sender.call(TaskName.EMBED, EmbedRequest(text="during the outage"), timeout=60)
    # Backoff 0.2 + 0.4 + 0.8 s between the four attempts (ATHENA_RETRY_* in conftest).
    assert time.monotonic() - started >= 1.4
