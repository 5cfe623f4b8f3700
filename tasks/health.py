"""Health: each server queue's worker answers about its own server.

Asked as a remote control command, `athena_server_health`, which the worker's
main process answers at once, even while every pool process generates: a
health check never waits in the work queue behind a long generation, and a
busy reasoning worker is not marked unhealthy (`AthenaClient.health`,
`athena-inference health`, compose's health checks). The command looks with a
client of its own, made and closed per look, since the main process of a
prefork worker must hold no connection its later children would inherit.

The task per lane with a server (config/registry.py), `athena.health.<queue>`,
answered on that queue, stays for callers that send it by name.

An embedding lane embeds a probe through an `Embedder`: a 503 while the model
loads counts as not ready, and so do vectors of another size than the lane's
profile (the server runs another model); the bulk lane is ready when every
copy is. Any other server is asked for /health. No retries: a health check is
one look.
"""

from __future__ import annotations

import httpx
from celery.worker.control import inspect_command

from athena_client.contract.health import HEALTH_COMMAND, ServerHealth
from athena_client.contract.payloads import NoArguments
from athena_client.contract.routes import SERVER_HEALTH, Queue
from athena_inference.config.celery import app
from athena_inference.config.registry import Lane, lane, server_lanes
from athena_inference.config.servers import server_config
from athena_inference.config.settings import get_settings
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask
from athena_inference.workers.embedder import Embedder
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.server_pool import ServerPool

# The longest a look holds the worker's main process (it answers the broker meanwhile).
LOOK_TIMEOUT_S = 3.0


def _health_task(row: Lane):
    queue = row.queue

    def health(request: NoArguments) -> ServerHealth:
        return seams.embedder(queue).health() if row.embeds else seams.llama(queue).health()

    health.__name__ = health.__qualname__ = f"{queue.value}_health"
    health.__doc__ = f"One look at the {queue.value} lane's server."
    return app.task(name=SERVER_HEALTH[queue].value, base=AthenaTask)(health)


HEALTH_TASKS: dict[Queue, object] = {row.queue: _health_task(row) for row in server_lanes()}


def look_at_server(queue: Queue) -> ServerHealth:
    """One look at `queue`'s server through clients made for it alone."""
    settings = get_settings()
    server = server_config(queue, settings)
    timeout = httpx.Timeout(LOOK_TIMEOUT_S, connect=min(LOOK_TIMEOUT_S, settings.connect_timeout_s))
    pool = ServerPool([LlamaServer(url, timeout=timeout) for url in server.urls])
    try:
        if server.embeds:
            assert server.profile is not None and server.dimension is not None
            return Embedder(pool, server.profile, server.dimension).health()
        return pool.servers[0].health()
    finally:
        pool.close()


@inspect_command(name=HEALTH_COMMAND, args=[("queue", str)], signature="<queue>")
def _server_health_command(state, queue: str) -> dict:
    try:
        row = lane(Queue(queue))
    except ValueError:
        return ServerHealth(ready=False, detail=f"no queue {queue!r}").model_dump(mode="json")
    if row.server is None:
        return ServerHealth(ready=False, detail=f"the {queue} queue fronts no server").model_dump(mode="json")
    return look_at_server(row.queue).model_dump(mode="json")
