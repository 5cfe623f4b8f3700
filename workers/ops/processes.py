"""The command line of every process in the stack, built from settings.

The Procfile names these through `athena-inference serve ...` and
`athena-inference worker ...`, so one place decides threads, slots and ports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from athena_client.contract.routes import Queue
from athena_inference.config.registry import LANES, lane, server_lanes
from athena_inference.config.servers import SERVER_QUEUES, server_config
from athena_inference.config.settings import Settings
from athena_inference.workers.ops.secrets import new_password, stored_secret


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def llama_server_argv(queue: Queue, settings: Settings, binary: Path, model: Path, copy: int = 0) -> list[str]:
    """The command of the queue's server, or of copy `copy` of it (the bulk lane has one per CPU)."""
    server = server_config(queue, settings)
    if not 0 <= copy < server.copies:
        raise ValueError(f"the {queue.value} server has {server.copies} copies; there is no copy {copy}")
    host, port = host_port(server.urls[copy], 80)
    argv = [str(binary), "-m", str(model), "--host", host, "--port", str(port)]
    argv += ["-t", str(server.threads), "--metrics"]
    # A custom model keeps its own name; the defaults get a readable one.
    if server.alias is not None:
        argv += ["--alias", server.alias]
    if server.embeds:
        batch = settings.embedding_max_tokens
        sequences = embedding_sequences(server.slots, settings)
        # Each input must fit one physical batch, so -b = -ub = the longest text allowed,
        # and each sequence's share of the context too.
        argv += ["--embedding", "--pooling", server.profile.pooling, "-np", str(sequences), "-b", str(batch), "-ub", str(batch)]
        argv += ["-c", str(batch * sequences)]
        # Warnings and errors only: at its default, llama-server logs two lines for each
        # text it embeds, which `up` then relays (bench/queue_cpu.py).
        argv += ["--log-verbosity", "2"]
    else:
        argv += ["-np", str(server.slots), "-c", str(settings.reasoning_ctx * server.slots)]
    return argv


def embedding_sequences(slots: int, settings: Settings) -> int:
    """An embedding server's --parallel: a slot for each request its worker sends at
    once, and at least ATHENA_EMBEDDING_TEXTS_PER_PASS, so that one request's texts
    are read together."""
    return max(slots, settings.embedding_texts_per_pass)


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


def worker_pool(queue: Queue, settings: Settings) -> str:
    return lane(queue).pool(settings)


def worker_concurrency(queue: Queue, settings: Settings) -> int:
    """A server's slots for the queues in front of one, times its copies (a
    threaded embeddings worker: the embeds it may merge); one process for the rest."""
    if worker_pool(queue, settings) == "threads":
        return settings.embed_coalesce_tasks
    if queue not in SERVER_QUEUES:
        return 1
    server = server_config(queue, settings)
    return server.slots * server.copies


def worker_argv(queue: Queue, settings: Settings, *, node_suffix: str = "%h") -> list[str]:
    pool = worker_pool(queue, settings)
    argv = [
        sys.executable, "-m", "celery", "-A", "athena_inference.config.celery", "worker",
        "-Q", queue.value,
        "-P", pool,
        "-c", str(worker_concurrency(queue, settings)),
        "-n", f"{queue.value}@{node_suffix}",
        # Task events, so Flower shows each queue's tasks.
        "-E",
        "--loglevel", lane(queue).worker_loglevel,
        "--without-gossip", "--without-mingle",
    ]
    if pool == "prefork":
        # A process left holding too much memory (a leak, a huge input) is replaced after its task.
        argv += [
            "--max-memory-per-child", str(settings.worker_max_memory_per_child_mb * 1024),
            "--max-tasks-per-child", str(settings.worker_max_tasks_per_child),
        ]
    return argv


REDIS_PORT = 6379


def redis_password_file(settings: Settings) -> Path:
    return settings.cache_dir / "redis-password"


def redis_password(settings: Settings) -> str:
    """ATHENA_REDIS_PASSWORD, else the one made the first time and kept in cache_dir (0600)."""
    if settings.redis_password is not None:
        return settings.redis_password.get_secret_value()
    return stored_secret(redis_password_file(settings), new_password)


def redis_data_dir(settings: Settings) -> Path:
    # One folder per port: two embedded stacks on one machine (a test's beside
    # yours) must never write the same append-only file.
    _, port = host_port(settings.result_backend, REDIS_PORT)
    return settings.cache_dir / "redis" / str(port)


def _redis_quoted(value: str) -> str:
    # Redis reads a double-quoted value with backslash escapes, so any password stays one value on one line.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def redis_config(settings: Settings, password: str) -> str:
    host, port = host_port(settings.result_backend, REDIS_PORT)
    return "\n".join(
        [
            "# Written by `athena-inference serve redis` at every start, from settings; edits here are lost.",
            f"bind {host}",
            f"port {port}",
            f"dir {_redis_quoted(str(redis_data_dir(settings)))}",
            f"requirepass {_redis_quoted(password)}",
            # Queued tasks, unacknowledged ones and unread results survive a restart,
            # losing at most the last second of writes.
            "appendonly yes",
            "appendfsync everysec",
            # No RDB snapshots besides: the AOF's own rewrites start from an RDB
            # preamble, so it stays compact; a snapshot would add a fork of the whole
            # dataset every few minutes on a 2-core machine and a save at every stop.
            # For a backup, BGSAVE writes one on demand.
            'save ""',
            f"maxmemory {settings.redis_maxmemory_mb}mb",
            # Only keys with a TTL may be evicted: the broker's queues, unacknowledged
            # tasks, metrics and running jobs have none, so they are never dropped (at
            # the bound, writes fail instead). volatile-lru rather than volatile-ttl:
            # the soonest to expire are a running job's lease (seconds) and fresh
            # results (an hour), which volatile-ttl would evict before day-old cache
            # entries; least recently used picks stale cache entries and results nobody
            # came back for, while a lease renewed every few seconds stays.
            "maxmemory-policy volatile-lru",
            "",
        ]
    )


def write_redis_config(settings: Settings, password: str) -> Path:
    """The config file, private from its first byte: created 0600 under a new name, then renamed into place."""
    data = redis_data_dir(settings)
    data.mkdir(parents=True, exist_ok=True)
    # The append-only file holds every queued payload and result.
    data.chmod(0o700)
    path = data / "redis.conf"
    partial = data / f".redis.conf.{os.getpid()}"
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(redis_config(settings, password))
    os.replace(partial, path)
    return path


def redis_argv(settings: Settings, binary: Path) -> list[str]:
    """Writes the config file and returns the command that reads it: the password is on no command line."""
    return [str(binary), str(write_redis_config(settings, redis_password(settings)))]


COMMAND = "athena-inference"


def procfile() -> str:
    """The Procfile `up` runs: Redis, each lane's server, each lane's worker, Flower and the exporter.
    Checked in, so that honcho and a reader see the same file; a test keeps it equal to this."""
    entries = [("redis", f"{COMMAND} serve redis")]
    entries += [(row.server_process, f"{COMMAND} serve {row.server}") for row in server_lanes()]
    entries += [(row.worker_process, f"{COMMAND} worker {row.queue.value}") for row in LANES]
    entries += [("flower", f"{COMMAND} flower"), ("exporter", f"{COMMAND} exporter")]
    return "".join(f"{name}: {command}\n" for name, command in entries)


def flower_argv(settings: Settings) -> list[str]:
    # Our launcher rather than `celery flower`: it puts /metrics and the whole API
    # behind the password too. The password is not an argument: `ps` shows every
    # argument list to every user, so launch.run_flower hands it over in the environment.
    return [
        sys.executable, "-m", "athena_inference.workers.ops.flower_app",
        f"--port={settings.flower_port}", f"--address={settings.flower_address}",
    ]
