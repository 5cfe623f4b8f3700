"""Turning this process into one process of the stack: a server, a worker or Flower.

Each replaces the `athena-inference` process with the real one (`exec`), so
the process manager's signals reach the server itself.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import httpx

from athena_client.contract.errors import ConfigurationError
from athena_client.contract.routes import Queue
from athena_inference.config.celery import WORKER_QUEUE_ENV
from athena_inference.config.registry import lane, served, servers
from athena_inference.config.servers import SERVER_QUEUES, server_config
from athena_inference.config.settings import Settings
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.ops import processes, provision

# What `serve` starts besides Redis.
SERVED = servers()


class FlowerRefused(Exception):
    """Flower would start without a password, and nobody said that is wanted."""


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    os.execv(argv[0], argv)


def serve_redis(settings: Settings) -> None:
    _exec(processes.redis_argv(settings, provision.redis_server_binary()))


# honcho names the copies of a Procfile entry `<name>.1`, `<name>.2`, ... in this variable.
HONCHO_NAME_ENV = "HONCHO_PROCESS_NAME"


def copy_number(given: Optional[int]) -> int:
    """The copy asked for, else the one honcho started (`up` runs the bulk entry once per copy), else 1."""
    if given is not None:
        return given
    suffix = os.environ.get(HONCHO_NAME_ENV, "").rpartition(".")[2]
    return int(suffix) if suffix.isdigit() and int(suffix) > 0 else 1


def serve_llama(what: str, settings: Settings, copy: int = 0) -> None:
    queue = served(what).queue
    server = server_config(queue, settings)
    if copy >= server.copies:
        raise ConfigurationError(
            f"copy {copy + 1} of the {what} server was asked for, but there are {server.copies} "
            f"(ATHENA_EMBEDDINGS_BULK_SERVERS for the bulk lane)"
        )
    if server.embeds:
        model = provision.embedding_model(settings, str(served(what).settings_key))
    else:
        model = provision.reasoning_model(settings)
    os.nice(server.nice)
    if server.idle:
        idle_policy()
    cpus = processes.server_cpus(queue, settings, sorted(os.sched_getaffinity(0)))
    if cpus:
        os.sched_setaffinity(0, cpus)
    _exec(processes.llama_server_argv(queue, settings, provision.llama_server_binary(settings), model, copy))


def idle_policy() -> None:
    """SCHED_IDLE for this process and the server it becomes (its threads inherit it)."""
    if not hasattr(os, "SCHED_IDLE"):
        print("warning: SCHED_IDLE is Linux's; the bulk server runs at its nice value alone here", file=sys.stderr)
        return
    # Lowering one's own policy needs no privilege.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def run_worker(queue: Queue, settings: Settings, node_suffix: str) -> None:
    _warn_if_server_has_fewer_slots(queue, settings)
    # The compression worker's processes load their model at start.
    os.environ[WORKER_QUEUE_ENV] = queue.value
    os.nice(lane(queue).worker_nice)
    _exec(processes.worker_argv(queue, settings, node_suffix=node_suffix))


def _warn_if_server_has_fewer_slots(queue: Queue, settings: Settings) -> None:
    """A server with fewer slots than its worker has requests out keeps the rest in its own
    queue, unseen. (More is fine: an embedding server reads several texts of one request at
    once, ATHENA_EMBEDDING_TEXTS_PER_PASS.)"""
    if queue not in SERVER_QUEUES:
        return
    url = server_config(queue, settings).url
    server = LlamaServer(url, timeout=httpx.Timeout(2.0))
    slots = server.slots()
    server.close()
    # A threaded embeddings worker runs more tasks than that, but sends at most this many requests at once.
    requests = server_config(queue, settings).slots
    if slots is not None and slots < requests:
        setting = f"ATHENA_{queue.value.upper()}_SLOTS"
        print(
            f"warning: {url} has {slots} slots but the {queue.value} worker sends up to {requests} requests at once "
            f"({setting}); set {setting}={slots} so the backlog waits in the queue, not in the server",
            file=sys.stderr,
        )


# Flower reads its own options from FLOWER_<OPTION> variables.
FLOWER_LOGIN_ENV = "FLOWER_BASIC_AUTH"


def run_flower(settings: Settings) -> None:
    if settings.flower_basic_auth is None:
        if not settings.flower_unauthenticated:
            raise FlowerRefused(
                "set ATHENA_FLOWER_BASIC_AUTH=user:password (`up` sets one for you); Flower shows every "
                "task's arguments and results, so it starts without a password only with ATHENA_FLOWER_UNAUTHENTICATED=true"
            )
        print("warning: Flower runs WITHOUT authentication (ATHENA_FLOWER_UNAUTHENTICATED=true)", file=sys.stderr)
        # Flower would take a login left in the environment by someone else; the
        # warning above must stay true, and the settings alone decide.
        os.environ.pop(FLOWER_LOGIN_ENV, None)
    else:
        # Flower's own variable for its login. A process's environment is readable
        # only by its user and root, while its arguments are shown by `ps` to all.
        os.environ[FLOWER_LOGIN_ENV] = settings.flower_basic_auth.get_secret_value()
    _exec(processes.flower_argv(settings))
