"""The Celery app: one queue per kind of model call, JSON only, late acks.

Workers start with `celery -A athena_inference.config.celery worker -Q <queue>`
(the `athena-inference worker <queue>` command builds that line from settings).
"""

from __future__ import annotations

import time

from celery import Celery
from celery.signals import before_task_publish
from kombu import Queue as KombuQueue
from kombu.transport import TRANSPORT_ALIASES

from athena_client.contract.routes import ENQUEUED_AT_HEADER, TASK_QUEUES, Queue, TaskName
from athena_client.shared_redis.celery_options import PUBLISH_RETRY_POLICY, RESULT_RETRIES
from athena_client.shared_redis.redis_transport import REDIS_TRANSPORT
from athena_inference.config.registry import LANES, task_modules
from athena_inference.config.settings import Settings, get_settings

TASK_MODULES = task_modules()
# Set by `athena-inference worker <queue>`, so the worker's processes know what they serve.
WORKER_QUEUE_ENV = "ATHENA_WORKER_QUEUE"


def time_limits(settings: Settings) -> dict[Queue, int]:
    """Hard limits per queue, for the lanes that have one (config/registry.py)."""
    return {lane.queue: limit for lane in LANES if (limit := lane.time_limit_s(settings)) is not None}


def celery_config(settings: Settings) -> dict:
    limits = time_limits(settings)
    return {
        # JSON only: a pickled message could run arbitrary code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [KombuQueue(lane.queue.value, routing_key=lane.queue.value) for lane in LANES],
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
        **redis_restart_settings(),
        # An unread result goes after this long; the client deletes one as soon as it has read it.
        "result_expires": settings.result_expires_s,
        # No result_extended: it would store each task's inputs (up to 512 texts,
        # 500 events) again beside its result. Flower builds its task pages from
        # task events, not from stored results, and nothing else reads them.
        # No task_track_started: it writes a STARTED state to the result backend
        # before every task (and wakes the waiting client) on the interactive
        # path; Flower and `health` see a task start from its task-started event
        # (on the lanes that send one: config/registry.py, Lane.started_events).
        # athena.reason alone sets it on itself (tasks/reasoning.py): one write
        # against seconds of generation, and its caller times the run from it.
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        # Task events go to Flower a tenth of a second's worth at a time, as one message.
        "worker_consumer": "athena_inference.workers.task_events:BatchingConsumer",
        "worker_hijack_root_logger": False,
    }


def redis_restart_settings() -> dict:
    """What lets workers ride out a Redis restart (tests/config/test_redis_restart_integration.py)."""
    return {
        # Retry the broker forever: under `up`, honcho stops the whole stack
        # when one worker exits, and the default (100 tries) gives up.
        "broker_connection_max_retries": None,
        # A result finished while Redis is away is stored once it is back: without
        # this, storing failed at once and the caller got a ConnectionError for a
        # task that had succeeded.
        **RESULT_RETRIES,
        # Tasks that publish (consolidation's stages, the jobs runner's batches) wait out a restart too.
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
    }


def use_fixed_redis_transport() -> None:
    """redis:// and rediss:// get kombu's Redis transport with the fix in
    client/shared_redis/redis_transport.py, so a Redis restart with a task in flight does not
    kill the worker. Under the schemes' own names, so URLs, logs and Flower's
    broker page still say redis://; set before any connection is made."""
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = REDIS_TRANSPORT


def make_celery(settings: Settings) -> Celery:
    app = Celery("athena", broker=settings.broker_url, backend=settings.result_backend, include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    return app


@before_task_publish.connect
def _stamp_enqueue_time(headers=None, **_):
    # The worker subtracts this from its own start time to report queue wait.
    if headers is not None and ENQUEUED_AT_HEADER not in headers:
        headers[ENQUEUED_AT_HEADER] = time.time()


use_fixed_redis_transport()
app = make_celery(get_settings())

__all__ = ["app", "make_celery", "celery_config", "TaskName"]
