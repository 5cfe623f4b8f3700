"""RabbitMQ as the broker (a setting), Redis staying the result backend."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

from athena_client import AthenaClient

pytestmark = pytest.mark.integration

AMQP_PORT = 5672


def _listening() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", AMQP_PORT)) == 0


@pytest.fixture(scope="module")
def rabbitmq_vhost():
    """A vhost of our own on the machine's RabbitMQ (started if it is down), so tests never meet other queues."""
    if not _listening():
        if shutil.which("rabbitmq-server") is None:
            pytest.skip("no RabbitMQ on 127.0.0.1:5672 and none installed (rabbitmq-server not found)")
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True)
        deadline = time.monotonic() + 90
        while not _listening() and time.monotonic() < deadline:
            time.sleep(1)
        if not _listening():
            pytest.skip("RabbitMQ did not come up on 127.0.0.1:5672 after `rabbitmq-server -detached`")
    if shutil.which("rabbitmqctl") is None:
        yield "/"
        return
    vhost = f"athena-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, timeout=60)
    if made.returncode != 0:
        yield "/"
        return
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], capture_output=True, timeout=60)
    try:
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


def test_embed_and_reason_through_rabbitmq(stack, rabbitmq_vhost):
    broker = f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/{rabbitmq_vhost.replace('/', '%2F')}"
    backend = stack.env["ATHENA_RESULT_BACKEND"]
    env = {"ATHENA_BROKER_URL": broker}
    workers = [stack.worker("embeddings", "rabbit", env), stack.worker("reasoning", "rabbit", env)]
    with AthenaClient(broker, backend) as client:
        try:
            stack.wait_for_workers(client, {"embeddings@rabbit", "reasoning@rabbit"})
            vector = client.embed("a memory sent through RabbitMQ")
            reply = client.reason("Say yes.", max_tokens=4, temperature=0.0)
        finally:
            for worker in workers:
                worker.stop()
    assert vector.dimension == 384 and vector.timing.queue == "embeddings"
    assert reply.timing.queue == "reasoning" and reply.text
