"""Everything the settings say about one llama-server, as one value.

The tasks read a server's URL and timeout from here, and the process builder
(`workers/ops/processes.py`) its slots, threads, priority and CPUs, so the two
can never disagree about which server a queue fronts.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict

from athena_client.contract.routes import Queue
from athena_inference.config.embedding_profiles import EmbeddingProfile
from athena_inference.config.registry import lane, server_lanes
from athena_inference.config.settings import Settings

SERVER_QUEUES = tuple(row.queue for row in server_lanes())
EMBEDDING_QUEUES = tuple(row.queue for row in server_lanes() if row.embeds)
# The names the default models are served under (config/registry.py).
MODEL_ALIASES = {row.queue: row.model_alias for row in server_lanes()}


class ServerConfig(BaseModel):
    """One llama-server and the worker in front of it."""

    model_config = ConfigDict(frozen=True)

    queue: Queue
    # The first copy's URL; copy i listens on its port + i (only the bulk lane has more than one).
    url: str
    copies: int = 1
    # The server's --parallel, and the concurrency of the worker in front of it.
    slots: int
    threads: int
    nice: int
    # Run under Linux's SCHED_IDLE policy: any other runnable process takes the CPU first.
    idle: bool = False
    # "auto", "none" or a list such as "0,1" (see Settings).
    cpus: str
    read_timeout_s: float
    # The default model's name on the server; None when a custom model keeps its own.
    alias: Optional[str]
    # An embedding lane's model conventions, and the size of the vectors it returns by default.
    profile: Optional[EmbeddingProfile] = None
    dimension: Optional[int] = None

    @property
    def embeds(self) -> bool:
        return self.queue in EMBEDDING_QUEUES

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(copy_url(self.url, index) for index in range(self.copies))


def copy_url(url: str, index: int) -> str:
    """Where copy `index` of the server at `url` listens: the port + index."""
    if index == 0:
        return url
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return urlunsplit(parts._replace(netloc=f"{host}:{port + index}"))


def server_config(queue: Queue, settings: Settings) -> ServerConfig:
    """The llama-server a queue's workers front; KeyError for a queue without one."""
    if queue not in SERVER_QUEUES:
        raise KeyError(f"the {queue.value} queue fronts no llama-server")
    s = settings
    own = s.server(str(lane(queue).settings_key))
    bulk = queue is Queue.EMBEDDINGS_BULK
    # Every embedding lane serves the interactive lane's model unless given one of its own.
    custom_model = own.model_path or (s.embeddings_model_path if queue in EMBEDDING_QUEUES else None)
    profile = s.embedding_profile_for(bulk) if queue in EMBEDDING_QUEUES else None
    return ServerConfig(
        queue=queue,
        url=own.url,
        copies=s.embeddings_bulk_copies if bulk else 1,
        slots=own.slots,
        threads=own.threads or s.n_threads,
        nice=own.nice,
        idle=s.embeddings_bulk_idle if bulk else False,
        cpus=own.cpus,
        read_timeout_s=getattr(s, str(lane(queue).read_timeout)),
        alias=None if custom_model is not None else MODEL_ALIASES[queue],
        profile=profile,
        dimension=s.lane_dimension(bulk, profile) if profile else None,
    )
