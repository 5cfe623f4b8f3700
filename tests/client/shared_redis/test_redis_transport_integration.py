"""The broker's Redis channel still reaches Redis after Celery has detached its transport.

On a lost broker connection Celery detaches the kombu transport from its
connection and then closes the channel again, which puts unacknowledged
messages back through a new Redis client. These steps, done by hand on a real
redis-server, are what killed a worker when Redis restarted with a task running.
"""

from __future__ import annotations

import os

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from athena_client.shared_redis.redis_transport import Transport
from tests.harness import Stack, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("logs"), dict(os.environ))
    port = free_port()
    try:
        stack.redis(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stack.stop_all()


def detached_channel(connection: Connection):
    channel = connection.channel()
    # What Celery's consumer does on a lost connection: the transport loses its
    # connection info, and the channel's pools are dropped when it is closed.
    connection.transport.client = None
    channel._pool = None
    return channel


def test_a_detached_channel_reaches_redis_through_the_address_it_had(redis_url):
    with Connection(redis_url, transport=Transport) as connection:
        channel = detached_channel(connection)
        with channel.conn_or_acquire() as client:
            assert client.ping()


def test_kombus_own_channel_cannot_once_detached(redis_url):
    # The failure the fix is for; if kombu fixes it, client/shared_redis/redis_transport.py can go.
    with Connection(redis_url, transport=kombu_redis.Transport) as connection:
        channel = detached_channel(connection)
        with pytest.raises(AttributeError, match="hostname"):
            with channel.conn_or_acquire():
                pass
