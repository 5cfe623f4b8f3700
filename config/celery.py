"""The Celery app: one queue per kind of model call, JSON only, late acks.

Workers start with `celery -A athena_inference.config.celery worker -Q <queue>`
(the `athena-inference worker <queue>` command builds that line from settings).
"""

from __future__ import annotations

import time

from celery import Celery
from celery.signals import before_task_publish
from kombu import Queue as KombuQueue

from athena_client.routes import ENQUEUED_AT_HEADER, TASK_QUEUES, Queue, TaskName
from athena_inference.config.settings import Settings, get_settings

TASK_MODULES = [
    "athena_inference.tasks.embeddings",
    "athena_inference.tasks.reasoning",
    "athena_inference.tasks.compression",
    "athena_inference.tasks.consolidation.stages",
    "athena_inference.tasks.health",
    "athena_inference.tasks.jobs",
]
# Set by `athena-inference worker <queue>`, so the worker's processes know what they serve.
WORKER_QUEUE_ENV = "ATHENA_WORKER_QUEUE"


def time_limits(settings: Settings) -> dict[Queue, int]:
    """Hard limits per queue. The jobs queue has none: a store's re-embedding runs
    for hours, and its lease (not the visibility timeout) keeps a second runner off it."""
    return {
        Queue.EMBEDDINGS: settings.embed_time_limit_s,
        Queue.EMBEDDINGS_BULK: settings.embed_time_limit_s,
        Queue.REASONING: settings.reason_time_limit_s,
        Queue.COMPRESSION: settings.compression_time_limit_s,
        Queue.CONSOLIDATION: settings.consolidation_time_limit_s,
    }


def celery_config(settings: Settings) -> dict:
    limits = time_limits(settings)
    return {
        # JSON only: a pickled message could run arbitrary code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [KombuQueue(q.value, routing_key=q.value) for q in Queue],
        "task_routes": {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        "task_annotations": {
            name.value: {"time_limit": limits[queue], "soft_time_limit": round(limits[queue] * 0.9, 3)}
            for name, queue in TASK_QUEUES.items()
            if queue in limits
        },
        # A task is acknowledged only when it has finished, and one whose worker
        # died is put back: a killed worker loses no task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Each worker process holds one task at a time, so the rest of the backlog
        # stays in Redis where another worker (or Flower) can see it.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "result_expires": settings.result_expires_s,
        # Name, queue and worker are stored with each result, for Flower and the CLI.
        "result_extended": True,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("athena", broker=settings.broker_url, backend=settings.result_backend, include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    return app


@before_task_publish.connect
def _stamp_enqueue_time(headers=None, **_):
    # The worker subtracts this from its own start time to report queue wait.
    if headers is not None and ENQUEUED_AT_HEADER not in headers:
        headers[ENQUEUED_AT_HEADER] = time.time()


app = make_celery(get_settings())

__all__ = ["app", "make_celery", "celery_config", "TaskName"]
