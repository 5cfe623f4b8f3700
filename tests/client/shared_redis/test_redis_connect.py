"""Our own Redis clients retry connection errors through a Redis restart."""

from __future__ import annotations

import redis

from athena_client.shared_redis.redis_connect import RESTART_RETRIES, redis_client


def connection_retry(client: redis.Redis):
    return client.connection_pool.make_connection().retry


def test_connection_errors_and_timeouts_are_retried():
    retry = connection_retry(redis_client("redis://127.0.0.1:6390/0"))
    assert redis.ConnectionError in retry._supported_errors and redis.TimeoutError in retry._supported_errors


def test_a_redis_still_loading_its_file_counts_as_a_connection_error():
    assert issubclass(redis.BusyLoadingError, redis.ConnectionError)


def test_the_retries_wait_out_a_restart_of_about_fifteen_seconds():
    retry = connection_retry(redis_client("redis://127.0.0.1:6390/0"))
    waited = sum(retry._backoff.compute(failures) for failures in range(1, RESTART_RETRIES + 1))
    assert RESTART_RETRIES == retry._retries and 10 <= waited <= 20


def test_options_such_as_timeouts_are_passed_on():
    client = redis_client("redis://127.0.0.1:6390/0", socket_timeout=5)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 5
