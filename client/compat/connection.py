"""One `AthenaClient` per process for the compatibility layer, made on first use.

Athena builds `LocalLLMClient` and `EmbeddingModel` objects freely (some in
every call of a hot path); they all share this one client, and with it one
broker connection pool, instead of opening a connection each.
"""

from __future__ import annotations

import os
import threading
from athena_client.client import DEFAULT_RESULT_BACKEND, AthenaClient
from athena_client.shared_redis.metrics import SIDE_DATABASE, with_database

_lock = threading.Lock()
_clients: dict[float, AthenaClient] = {}


def shared_client(timeout_s: float) -> AthenaClient:
    """The process's client that waits `timeout_s` for a result, over ATHENA_BROKER_URL and ATHENA_RESULT_BACKEND."""
    with _lock:
        if timeout_s not in _clients:
            _clients[timeout_s] = AthenaClient(timeout=timeout_s)
        return _clients[timeout_s]


def metrics_url() -> str:
    """Where the workers keep their metrics: ATHENA_METRICS_URL, else the result backend's Redis, database 2."""
    return os.environ.get("ATHENA_METRICS_URL") or with_database(
        os.environ.get("ATHENA_RESULT_BACKEND", DEFAULT_RESULT_BACKEND), SIDE_DATABASE
    )
