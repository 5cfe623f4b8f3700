"""The command line of every process in the stack, built from settings.

The Procfile names these through `athena-inference serve ...` and
`athena-inference worker ...`, so one place decides threads, slots and ports.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from athena_client.routes import Queue
from athena_inference.config.servers import SERVER_QUEUES, server_config
from athena_inference.config.settings import Settings


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def llama_server_argv(queue: Queue, settings: Settings, binary: Path, model: Path) -> list[str]:
    server = server_config(queue, settings)
    host, port = host_port(server.url, 80)
    argv = [str(binary), "-m", str(model), "--host", host, "--port", str(port)]
    argv += ["-t", str(server.threads), "--metrics"]
    # A custom model keeps its own name; the defaults get a readable one.
    if server.alias is not None:
        argv += ["--alias", server.alias]
    if server.embeds:
        batch = settings.embedding_max_tokens
        # Each input must fit one physical batch, so -b = -ub = the longest text allowed.
        argv += ["--embedding", "--pooling", "mean", "-np", str(server.slots), "-b", str(batch), "-ub", str(batch)]
        argv += ["-c", str(batch * server.slots)]
    else:
        argv += ["-np", str(server.slots), "-c", str(settings.reasoning_ctx * server.slots)]
    return argv


def server_cpus(queue: Queue, settings: Settings, available: list[int]) -> set[int]:
    """The CPUs a llama-server is pinned to; empty means no pinning."""
    wanted = server_config(queue, settings).cpus
    # "auto" splits the CPUs between the two interactive servers; the bulk one floats.
    if wanted == "none" or (wanted == "auto" and queue is Queue.EMBEDDINGS_BULK):
        return set()
    if wanted != "auto":
        return {int(cpu) for cpu in wanted.split(",")}
    embeddings = server_config(Queue.EMBEDDINGS, settings).threads
    reasoning = server_config(Queue.REASONING, settings).threads
    if len(available) < embeddings + reasoning:
        return set()
    return set(available[:embeddings] if queue is Queue.EMBEDDINGS else available[-reasoning:])


def worker_concurrency(queue: Queue, settings: Settings) -> int:
    """A server's slots for the queues in front of one; one process for the rest."""
    return server_config(queue, settings).slots if queue in SERVER_QUEUES else 1


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
