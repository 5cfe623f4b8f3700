"""The seams a worker process uses, made once per process after fork.

Celery's prefork parent imports the task modules before forking, so nothing is
built at import time: the first task in each child builds its client, and
`worker_process_shutdown` closes it. Tests swap a seam with `use_*`.
"""

from __future__ import annotations

import logging
from typing import Optional

import httpx
from celery.signals import worker_process_shutdown

from athena_client.routes import Queue
from athena_inference.config.settings import Settings, get_settings
from athena_inference.workers.llama_server import LlamaServer, RetryPolicy
from athena_inference.workers.metrics import MetricsStore

# httpx logs every request at INFO, which would bury the worker's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)

_servers: dict[Queue, LlamaServer] = {}
_metrics: Optional[MetricsStore] = None


def llama_server_for(queue: Queue, settings: Optional[Settings] = None) -> LlamaServer:
    settings = settings or get_settings()
    urls = {Queue.EMBEDDINGS: settings.embeddings_url, Queue.REASONING: settings.reasoning_url}
    read_timeouts = {Queue.EMBEDDINGS: settings.embed_timeout_s, Queue.REASONING: settings.reason_timeout_s}
    return LlamaServer(
        urls[queue],
        timeout=httpx.Timeout(read_timeouts[queue], connect=settings.connect_timeout_s),
        retry=RetryPolicy(settings.retry_attempts, settings.retry_backoff_s, settings.retry_backoff_max_s),
    )


def llama(queue: Queue) -> LlamaServer:
    if queue not in _servers:
        _servers[queue] = llama_server_for(queue)
    return _servers[queue]


def metrics() -> MetricsStore:
    global _metrics
    if _metrics is None:
        settings = get_settings()
        _metrics = MetricsStore.from_url(settings.metrics_redis_url, window=settings.metrics_window)
    return _metrics


def use_llama(queue: Queue, server: LlamaServer) -> None:
    _servers[queue] = server


def use_metrics(store: MetricsStore) -> None:
    global _metrics
    _metrics = store


def reset() -> None:
    """Close and forget every seam; the next task makes new ones."""
    global _metrics
    for server in _servers.values():
        server.close()
    _servers.clear()
    _metrics = None


@worker_process_shutdown.connect
def _close(**_):
    reset()
