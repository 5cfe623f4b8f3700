"""Health tasks: each server queue's worker answers about its own server."""

from __future__ import annotations

from athena_client.contract.health import ServerHealth
from athena_client.contract.payloads import NoArguments
from athena_client.contract.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask


@app.task(name=TaskName.EMBEDDINGS_HEALTH.value, base=AthenaTask)
def embeddings_health(request: NoArguments) -> ServerHealth:
    """One look at the interactive embedding server (no retries): a 503 while the model loads counts as not ready,
    and so do vectors of another size than the lane's profile (the server runs another model)."""
    return seams.embedder(Queue.EMBEDDINGS).health()


@app.task(name=TaskName.REASONING_HEALTH.value, base=AthenaTask)
def reasoning_health(request: NoArguments) -> ServerHealth:
    """One look at the reasoning server."""
    return seams.llama(Queue.REASONING).health()


@app.task(name=TaskName.EMBEDDINGS_BULK_HEALTH.value, base=AthenaTask)
def embeddings_bulk_health(request: NoArguments) -> ServerHealth:
    """One look at each of the bulk lane's embedding servers: ready when every copy is, and one makes vectors of the profile's size."""
    return seams.embedder(Queue.EMBEDDINGS_BULK).health()
