"""How many messages wait in a broker queue, on Redis and on RabbitMQ alike."""

from __future__ import annotations

from amqp.exceptions import ChannelError
from kombu import Connection


def queue_depth(connection: Connection, queue: str) -> int:
    """Messages waiting in `queue`; 0 for a queue the broker does not know yet."""
    try:
        return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:
        # Redis reports an empty queue as missing; RabbitMQ closes the channel, so the next call opens another.
        connection.release()
        return 0
