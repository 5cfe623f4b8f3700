"""How many times each task message has been delivered to a worker, shared by every worker process.

A message whose worker dies while running it (killed for memory, a crash) goes
back to the queue (acks_late with reject_on_worker_lost) and is delivered
again. Counting deliveries per task id and retry lets a worker refuse the one
that keeps killing its workers, instead of redelivering it forever.

The broker marks a message it hands out again (`redelivered`: Redis when it
puts back an unacknowledged message, RabbitMQ natively), so a first delivery,
nearly every one, costs nothing here; only redeliveries are counted in Redis.
"""

from __future__ import annotations

import redis

PREFIX = "athena:deliveries:"


class DeliveryCounter:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        # Outlives any redelivery (the broker's visibility timeout), then goes by itself.
        self.ttl_s = ttl_s

    @staticmethod
    def _key(task_id: str, retries: int) -> str:
        # A retry is a new delivery of the task on purpose, not a redelivery: counted apart.
        return f"{PREFIX}{task_id}:{retries}"

    def delivered(self, task_id: str, retries: int, *, redelivered: bool) -> int:
        """Count this delivery; returns how many there have been."""
        if not redelivered:
            return 1
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(self._key(task_id, retries))
        pipe.expire(self._key(task_id, retries), self.ttl_s)
        count, _ = pipe.execute()
        return int(count) + 1

    def so_far(self, task_id: str, retries: int) -> int:
        """How many deliveries have been counted (the first one always is)."""
        return int(self.redis.get(self._key(task_id, retries)) or 0) + 1

    def done(self, task_id: str, retries: int) -> None:
        """A redelivered message's run ended (in success or a typed failure): nothing to count any more."""
        self.redis.delete(self._key(task_id, retries))
