"""Health tasks: each server queue's worker answers about its own server.

One task per lane with a server (config/registry.py), `athena.health.<queue>`,
answered on that queue. An embedding lane embeds a probe through its
`Embedder`: a 503 while the model loads counts as not ready, and so do vectors
of another size than the lane's profile (the server runs another model); the
bulk lane is ready when every copy is. Any other server is asked for /health.
No retries: a health check is one look.
"""

from __future__ import annotations

from athena_client.contract.health import ServerHealth
from athena_client.contract.payloads import NoArguments
from athena_client.contract.routes import SERVER_HEALTH, Queue
from athena_inference.config.celery import app
from athena_inference.config.registry import Lane, server_lanes
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask


def _health_task(row: Lane):
    queue = row.queue

    def health(request: NoArguments) -> ServerHealth:
        return seams.embedder(queue).health() if row.embeds else seams.llama(queue).health()

    health.__name__ = health.__qualname__ = f"{queue.value}_health"
    health.__doc__ = f"One look at the {queue.value} lane's server."
    return app.task(name=SERVER_HEALTH[queue].value, base=AthenaTask)(health)


HEALTH_TASKS: dict[Queue, object] = {row.queue: _health_task(row) for row in server_lanes()}
