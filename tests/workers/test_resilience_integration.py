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
from athena_client.contract.routes import Queue, TaskName


@pytest.fixture(scope="module")
def outage(stack):
    # About the HTTP call's own retries: no waiting it out at the task level.
    with stack.side_lane(Queue.EMBEDDINGS, "outage", own_server=True, ATHENA_EMBED_RETRY_BUDGET_S="0") as side:
        yield side.client, side.server


def test_stopped_server_gives_retries_then_a_clear_failure(outage):
    sender, server = outage
    assert sender.call(TaskName.EMBED, EmbedRequest(text="before the outage")).dimension == 384
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"after 4 attempts"):
        sender.call(TaskName.EMBED, EmbedRequest(text="during the outage"), timeout=60)
    # Backoff 0.2 + 0.4 + 0.8 s between the four attempts (ATHENA_RETRY_* in conftest).
    assert time.monotonic() - started >= 1.4
