"""Health, as the workers report it and the client sums it up.

`ServerHealth` is what a server queue's worker answers about its own
llama-server (the `athena_server_health` remote control command, answered by
the worker's main process however busy its pool is; the `athena.health.*`
tasks give the same on the queue); `HealthReport` is the client's view of the
whole stack, per queue.
"""

from __future__ import annotations

from typing import Optional, Sequence

from pydantic import BaseModel

from athena_client.contract.payloads import CompressorStatus


# The remote control command a worker answers about its queue's server (tasks/health.py).
HEALTH_COMMAND = "athena_server_health"
# The queue whose health is its compressor's (routes.py imports this module, so the name is spelled here).
COMPRESSION_QUEUE = "compression"


class ServerHealth(BaseModel):
    """One look at a llama-server: a 503 while its model loads counts as not ready."""

    ready: bool
    detail: str
    model: Optional[str] = None
    # An embedding lane's profile, once a probe showed its server makes vectors of the profile's size.
    profile: Optional[str] = None


class QueueHealth(BaseModel):
    queue: str
    workers: list[str]
    server_ready: Optional[bool] = None
    model: Optional[str] = None
    profile: Optional[str] = None
    detail: Optional[str] = None

    @property
    def healthy(self) -> bool:
        return bool(self.workers) and self.server_ready is not False

    def with_server(self, server: ServerHealth) -> "QueueHealth":
        return self.model_copy(
            update={"server_ready": server.ready, "detail": server.detail, "model": server.model, "profile": server.profile}
        )


class HealthReport(BaseModel):
    broker_ok: bool = True
    broker_detail: str = "ok"
    queues: dict[str, QueueHealth]
    compression: CompressorStatus

    def healthy(self, queues: Sequence[str] = ()) -> bool:
        """The broker answers, and each queue asked about (default: all) has workers and a ready server."""
        wanted = list(queues) or list(self.queues)
        ok = self.broker_ok and all(self.queues[q].healthy for q in wanted)
        if COMPRESSION_QUEUE in wanted:
            ok = ok and self.compression.ready
        return ok

    def summary(self) -> dict[str, bool]:
        """Athena's `check_health()` shape."""
        embeddings, reasoning = self.queues["embeddings"], self.queues["reasoning"]
        return {
            "embedding": bool(embeddings.workers) and bool(embeddings.server_ready),
            "reasoning": bool(reasoning.workers) and bool(reasoning.server_ready),
            "compression": bool(self.queues["compression"].workers) and self.compression.ready,
        }
