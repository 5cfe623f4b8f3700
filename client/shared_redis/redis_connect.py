"""Redis clients that wait out a Redis restart instead of failing at once.

redis-py retries nothing by default: during a restart (a second or two, more
while a large append-only file loads) every command fails at once. A task
starting then failed its bookkeeping (the delivery count) and with it the task
(tests/config/test_redis_restart_integration.py). Our own clients (job
records, leases, caches, metrics, the workers' bookkeeping) retry connection
errors, loading included, for about 15 s, backing off from 0.1 s to 2 s.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RESTART_RETRIES = 10
RESTART_BACKOFF = dict(base=0.1, cap=2.0)


def restart_retry() -> Retry:
    return Retry(ExponentialBackoff(**RESTART_BACKOFF), RESTART_RETRIES)


def redis_client(url: str, **options) -> redis.Redis:
    """`redis.Redis.from_url(url, **options)`, retrying through a restart."""
    return redis.Redis.from_url(
        url, retry=restart_retry(), retry_on_error=[redis.ConnectionError, redis.TimeoutError], **options
    )
