"""The command line of every process in the stack, built from settings.

The Procfile names these through `athena-inference serve ...` and
`athena-inference worker ...`, so one place decides threads, slots and ports.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from athena_client.routes import Queue
from athena_inference.config.settings import Settings

# Set by `athena-inference worker <queue>`, so the worker's processes know what they serve.
WORKER_QUEUE_ENV = "ATHENA_WORKER_QUEUE"

# The bulk lane serves the same model under the same name, so its vectors and
# the interactive server's are interchangeable and recorded as one model id.
MODEL_ALIASES = {
    Queue.EMBEDDINGS: "all-MiniLM-L6-v2",
    Queue.EMBEDDINGS_BULK: "all-MiniLM-L6-v2",
    Queue.REASONING: "SmolLM2-135M-Instruct",
}
EMBEDDING_QUEUES = (Queue.EMBEDDINGS, Queue.EMBEDDINGS_BULK)


@dataclass(frozen=True)
class ServerSettings:
    """What the settings say about one llama-server and the worker in front of it."""

    url: str
    slots: int
    nice: int
    cpus: str


def server_settings(queue: Queue, settings: Settings) -> ServerSettings:
    """The llama-server a queue's workers front; KeyError for a queue without one."""
    return {
        Queue.EMBEDDINGS: ServerSettings(
            settings.embeddings_url, settings.embeddings_slots, settings.embeddings_nice, settings.embeddings_cpus
        ),
        Queue.EMBEDDINGS_BULK: ServerSettings(
            settings.embeddings_bulk_url,
            settings.embeddings_bulk_slots,
            settings.embeddings_bulk_nice,
            settings.embeddings_bulk_cpus,
        ),
        Queue.REASONING: ServerSettings(
            settings.reasoning_url, settings.reasoning_slots, settings.reasoning_nice, settings.reasoning_cpus
        ),
    }[queue]


def server_url(queue: Queue, settings: Settings) -> str:
    return server_settings(queue, settings).url


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def llama_server_argv(queue: Queue, settings: Settings, binary: Path, model: Path) -> list[str]:
    host, port = host_port(server_url(queue, settings), 80)
    argv = [str(binary), "-m", str(model), "--host", host, "--port", str(port)]
    argv += ["-t", str(settings.n_threads), "--metrics"]
    # A custom model keeps its own name; the defaults get a readable one.
    if queue in EMBEDDING_QUEUES:
        if settings.embeddings_model_path is None:
            argv += ["--alias", MODEL_ALIASES[queue]]
        slots, batch = worker_concurrency(queue, settings), settings.embedding_max_tokens
        # Each input must fit one physical batch, so -b = -ub = the longest text allowed.
        argv += ["--embedding", "--pooling", "mean", "-np", str(slots), "-b", str(batch), "-ub", str(batch)]
        argv += ["-c", str(batch * slots)]
    else:
        if settings.reasoning_model_path is None:
            argv += ["--alias", MODEL_ALIASES[queue]]
        slots = worker_concurrency(queue, settings)
        argv += ["-np", str(slots), "-c", str(settings.reasoning_ctx * slots)]
    return argv


def server_cpus(queue: Queue, settings: Settings, available: list[int]) -> set[int]:
    """The CPUs a llama-server is pinned to; empty means no pinning."""
    wanted = server_settings(queue, settings).cpus
    # "auto" splits the CPUs between the two interactive servers; the bulk one floats.
    if wanted == "none" or (wanted == "auto" and queue is Queue.EMBEDDINGS_BULK):
        return set()
    if wanted != "auto":
        return {int(cpu) for cpu in wanted.split(",")}
    threads = settings.n_threads
    if len(available) < 2 * threads:
        return set()
    return set(available[:threads] if queue is Queue.EMBEDDINGS else available[-threads:])


def worker_concurrency(queue: Queue, settings: Settings) -> int:
    """A server's slots for the queues in front of one; one process for the rest."""
    return server_settings(queue, settings).slots if queue in MODEL_ALIASES else 1


def worker_argv(queue: Queue, settings: Settings, *, node_suffix: str = "%h") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "athena_inference.config.celery", "worker",
        "-Q", queue.value,
        "-c", str(worker_concurrency(queue, settings)),
        "-n", f"{queue.value}@{node_suffix}",
        # Task events, so Flower shows each queue's tasks.
        "-E",
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]


def redis_argv(settings: Settings, binary: Path) -> list[str]:
    host, port = host_port(settings.result_backend, 6379)
    data = settings.cache_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # Append-only persistence: a restart of the embedded stack keeps queued tasks.
    return [str(binary), "--bind", host, "--port", str(port), "--dir", str(data), "--appendonly", "yes", "--save", ""]


def flower_argv(settings: Settings, basic_auth: Optional[str]) -> list[str]:
    argv = [
        sys.executable, "-m", "celery", "-A", "athena_inference.config.celery", "flower",
        f"--port={settings.flower_port}", f"--address={settings.flower_address}",
    ]
    return argv + [f"--basic-auth={basic_auth}"] if basic_auth else argv
