"""Every queue in one table: what runs on it, what it fronts, how its worker runs.

One row per queue. Celery's queues, routes and time limits, the health task of
each server, every task's retry budget, each process's name and command line,
the Procfile, the exporter's queue labels and Flower's queue list are all read
from here; compose's service commands are checked against it in a test. Adding
a kind of call is a row here, its task names in `client/contract/routes.py` (what the
client sends), and its task module.

The task-to-queue mapping itself stays in the contract (`client/contract/routes.py`),
which the client imports without any worker dependency; a row's tasks are read
from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from athena_client.contract.routes import TASK_QUEUES, Queue, TaskName

if TYPE_CHECKING:
    # The settings make a field of each server's settings from this table, so this module cannot import them.
    from athena_inference.config.settings import Settings

Pool = Literal["prefork", "threads"]


class Lane(BaseModel):
    """One queue and the worker that consumes it."""

    model_config = ConfigDict(frozen=True)

    queue: Queue
    # The module whose tasks run on it (imported by every worker).
    module: str
    # The llama-server its worker fronts (`athena-inference serve <server>`), or
    # None. Its health task is `athena.health.<queue>` (client/contract/routes.py).
    server: Optional[str] = None
    # That server's defaults for the settings every server has (config/server_settings.py).
    server_defaults: dict[str, Any] = Field(default_factory=dict)
    # Athena's own name for the server's URL, read instead of ATHENA_<SERVER>_URL.
    url_env: Optional[str] = None
    # The name the embedded default model is served under (a custom model keeps its own).
    model_alias: Optional[str] = None
    # The setting that bounds one HTTP request to the server.
    read_timeout: Optional[str] = None
    # Whether its server embeds (an embedding lane: a profile, a dimension).
    embeds: bool = False
    # How long, from its first try, a task keeps retrying a server that is
    # unavailable before it fails: the name of the setting, or None for no retries.
    retry_budget: Optional[str] = None
    # The setting that holds its tasks' hard time limit, or None for none.
    time_limit: Optional[str] = None
    # The setting that chooses the worker's pool, or None for prefork.
    pool_setting: Optional[str] = None
    # Whether its worker sends Flower a task-started event for each task. A lane whose
    # tasks take milliseconds does without: Flower shows them received, then done, with
    # their runtime, and is spared a third of the events it decodes (bench/queue_cpu.py).
    started_events: bool = True
    # Its worker's log level. INFO logs two lines a task ("received", "succeeded" with
    # the result's start): on a lane of millisecond tasks those lines, and `up`'s relaying
    # of them, cost more CPU than the task's own bookkeeping (bench/queue_cpu.py), and
    # Flower shows the same. Failures and retries are warnings, logged on every lane.
    worker_loglevel: Literal["INFO", "WARNING"] = "INFO"
    # Its worker's CPU priority (nice). A background lane's worker, like its server, gives way
    # to the interactive lanes' processes on a busy machine (bench/reembed.py).
    worker_nice: int = Field(0, ge=0, le=19)

    @property
    def tasks(self) -> tuple[TaskName, ...]:
        return tuple(task for task, queue in TASK_QUEUES.items() if queue is self.queue)

    @property
    def slug(self) -> str:
        """The lane's name where an underscore does not do: processes, services, commands."""
        return self.queue.value.replace("_", "-")

    @property
    def settings_key(self) -> Optional[str]:
        """The server's settings are `<key>_<field>` (`ATHENA_<KEY>_<FIELD>`)."""
        return self.server.replace("-", "_") if self.server else None

    @property
    def url_variable(self) -> Optional[str]:
        """The environment variable of its server's URL: Athena's own name, else ATHENA_<KEY>_URL."""
        if not self.server:
            return None
        return self.url_env or f"ATHENA_{str(self.settings_key).upper()}_URL"

    @property
    def worker_process(self) -> str:
        return f"{self.slug}-worker"

    @property
    def server_process(self) -> Optional[str]:
        return f"{self.server}-server" if self.server else None

    def pool(self, settings: Settings) -> Pool:
        return getattr(settings, self.pool_setting) if self.pool_setting else "prefork"

    def retry_budget_s(self, settings: Settings) -> float:
        return float(getattr(settings, self.retry_budget)) if self.retry_budget else 0.0

    def time_limit_s(self, settings: Settings) -> Optional[int]:
        return getattr(settings, self.time_limit) if self.time_limit else None


LANES: tuple[Lane, ...] = (
    Lane(
        queue=Queue.EMBEDDINGS,
        module="athena_inference.tasks.embeddings",
        server="embeddings",
        server_defaults={"url": "http://127.0.0.1:8001", "slots": 2, "nice": 0, "cpus": "auto"},
        url_env="LLAMACPP_EMBEDDINGS_URL",
        model_alias="all-MiniLM-L6-v2",
        read_timeout="embed_timeout_s",
        embeds=True,
        retry_budget="embed_retry_budget_s",
        time_limit="embed_time_limit_s",
        pool_setting="embeddings_pool",
        started_events=False,
        worker_loglevel="WARNING",
    ),
    Lane(
        queue=Queue.REASONING,
        module="athena_inference.tasks.reasoning",
        server="reasoning",
        # Generation yields the CPU to interactive embeds.
        server_defaults={"url": "http://127.0.0.1:8002", "slots": 1, "nice": 10, "cpus": "auto"},
        url_env="LLAMACPP_REASONING_URL",
        model_alias="SmolLM2-135M-Instruct",
        read_timeout="reason_timeout_s",
        retry_budget="reason_retry_budget_s",
        time_limit="reason_time_limit_s",
    ),
    Lane(
        queue=Queue.REASONING_BACKGROUND,
        module="athena_inference.tasks.consolidation.stages",
        # Its worker sends to the reasoning lane's server (one process: one
        # request at a time), so that server's queue holds at most one of these
        # in front of an interactive generation.
        retry_budget="reason_retry_budget_s",
        time_limit="reason_time_limit_s",
    ),
    Lane(
        queue=Queue.COMPRESSION,
        module="athena_inference.tasks.compression",
        time_limit="compression_time_limit_s",
    ),
    Lane(
        queue=Queue.CONSOLIDATION,
        module="athena_inference.tasks.consolidation.stages",
        # Its entry task calls the reasoning server (to count tokens); the stages run on the other lanes.
        retry_budget="reason_retry_budget_s",
        time_limit="consolidation_time_limit_s",
    ),
    Lane(
        queue=Queue.EMBEDDINGS_BULK,
        module="athena_inference.tasks.embeddings",
        server="embeddings-bulk",
        # A second server (one copy per CPU) for re-embedding jobs, so a job's
        # batches never wait in front of an interactive embed. It takes only the
        # CPU nothing interactive wants, on any CPU left idle.
        server_defaults={"url": "http://127.0.0.1:8003", "slots": 1, "nice": 19, "cpus": "none"},
        # The same model under the same name, so its vectors and the interactive
        # server's are recorded as one model id.
        model_alias="all-MiniLM-L6-v2",
        read_timeout="embed_timeout_s",
        embeds=True,
        retry_budget="embed_retry_budget_s",
        time_limit="embed_time_limit_s",
        worker_nice=10,
    ),
    Lane(
        queue=Queue.RERANK,
        module="athena_inference.tasks.rerank",
        server="rerank",
        # A server of its own, so a query against a hundred documents never waits
        # in front of an interactive embed; its port is past those of the most
        # bulk copies the settings allow (64 from 8003). It serves the interactive
        # lane's model under its profile unless given its own (ATHENA_RERANK_MODEL_PATH).
        server_defaults={"url": "http://127.0.0.1:8070", "slots": 1, "nice": 0, "cpus": "none"},
        model_alias="all-MiniLM-L6-v2",
        read_timeout="embed_timeout_s",
        embeds=True,
        retry_budget="embed_retry_budget_s",
        time_limit="embed_time_limit_s",
    ),
    # A store's re-embedding runs for hours: no time limit; its lease, not the
    # visibility timeout, keeps a second runner off it.
    Lane(queue=Queue.JOBS, module="athena_inference.tasks.jobs", worker_nice=10),
)
# Modules with tasks of more than one lane, or of none (health answers on each server's lane).
SHARED_TASK_MODULES = ("athena_inference.tasks.health",)

_BY_QUEUE = {lane.queue: lane for lane in LANES}


def lane(queue: Queue) -> Lane:
    return _BY_QUEUE[queue]


def lane_of(task: TaskName) -> Lane:
    return _BY_QUEUE[TASK_QUEUES[task]]


def task_modules() -> list[str]:
    """Every module that declares tasks, once each, in the table's order."""
    return list(dict.fromkeys([*(lane.module for lane in LANES), *SHARED_TASK_MODULES]))


def server_lanes() -> tuple[Lane, ...]:
    return tuple(lane for lane in LANES if lane.server)


def servers() -> list[str]:
    """What `athena-inference serve` starts besides Redis, in the table's order."""
    return [lane.server for lane in server_lanes() if lane.server]


def served(name: str) -> Lane:
    """The lane whose server `athena-inference serve <name>` starts."""
    for row in LANES:
        if row.server == name:
            return row
    raise KeyError(f"no lane serves {name!r}; servers: {', '.join(servers())}")
