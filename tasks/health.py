"""Health tasks: each server queue's worker answers about its own server."""

from __future__ import annotations

from athena_client.routes import SERVER_HEALTH, Queue
from athena_inference.config.celery import app
from athena_inference.tasks import resources


def _server_health(queue: Queue):
    @app.task(name=SERVER_HEALTH[queue].value)
    def server_health() -> dict:
        """One look at the server (no retries): a 503 while the model loads counts as not ready."""
        return resources.llama(queue).health().model_dump()

    return server_health


embeddings_health = _server_health(Queue.EMBEDDINGS)
reasoning_health = _server_health(Queue.REASONING)
embeddings_bulk_health = _server_health(Queue.EMBEDDINGS_BULK)
