"""`athena-inference up`: provision, run the Procfile, show a job through every queue.

The Procfile is run by honcho, which starts each process, prefixes its output,
and on Ctrl-C (or when one process dies) stops them all.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import redis

from athena_client.errors import AthenaError, ConfigurationError
from athena_client.jobs import JobStatus, JsonlSource
from athena_client.payloads import CompressRequest, EmbedBatchRequest, EmbedRequest, ReasonRequest, TaskTiming
from athena_client.routes import Queue, TaskName
from athena_client.sender import TaskSender
from athena_inference.config.settings import Settings
from athena_inference.workers.processes import host_port
from athena_inference.workers.provision import provision, say
from athena_inference.workers.reembed import iter_progress

PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _managed(url: str, default_port: int, what: str) -> bool:
    """Run our own copy only for a loopback address where nothing listens yet."""
    host, port = host_port(url, default_port)
    if host not in LOOPBACK:
        say(f"using the {what} at {url}")
        return False
    if port_open(host, port):
        say(f"something already listens at {host}:{port}; using it as the {what}")
        return False
    return True


def flower_auth(settings: Settings) -> str:
    if settings.flower_basic_auth is not None:
        return settings.flower_basic_auth.get_secret_value()
    path = settings.cache_dir / "flower-auth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"athena:{secrets.token_urlsafe(12)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def process_names(settings: Settings) -> list[str]:
    names = []
    if _managed(settings.result_backend, 6379, "Redis"):
        names.append("redis")
    if _managed(settings.embeddings_url, 80, "embeddings server"):
        names.append("embeddings-server")
    if _managed(settings.reasoning_url, 80, "reasoning server"):
        names.append("reasoning-server")
    if settings.embeddings_bulk_url != settings.embeddings_url and _managed(
        settings.embeddings_bulk_url, 80, "bulk embeddings server"
    ):
        names.append("embeddings-bulk-server")
    names += [f"{q.value}-worker" for q in Queue]
    names += ["flower", "exporter"]
    return names


def wait_until(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise ConfigurationError(f"the stack stopped while waiting for {what}; see the output above")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet is every kind of error
            pass
        time.sleep(0.5)
    raise ConfigurationError(f"{what} was not ready after {timeout:.0f} s")


def wait_ready(settings: Settings, sender: TaskSender, alive: Callable[[], bool], timeout: float = 180) -> None:
    client = redis.Redis.from_url(settings.result_backend)
    wait_until(lambda: bool(client.ping()), "Redis", timeout, alive)
    servers = (
        ("embeddings server", settings.embeddings_url),
        ("reasoning server", settings.reasoning_url),
        ("bulk embeddings server", settings.embeddings_bulk_url),
    )
    for name, url in servers:
        wait_until(lambda url=url: httpx.get(f"{url}/health", timeout=2).status_code == 200, name, timeout, alive)
    wanted = {q.value for q in Queue}

    def workers_online() -> bool:
        replies = sender.app.control.inspect(timeout=1.0).active_queues() or {}
        serving = {queue["name"] for queues in replies.values() for queue in queues}
        return wanted <= serving

    wait_until(workers_online, "a worker on every queue", timeout, alive)


def describe(timing: TaskTiming) -> str:
    server = timing.server
    parts = [
        f"queue wait {timing.queue_wait_ms:.1f} ms" if timing.queue_wait_ms is not None else "queue wait n/a",
        f"run {timing.run_ms:.1f} ms",
    ]
    if server is None:
        return f"model {timing.model}; " + ", ".join(parts)
    parts += [
        f"server {server.request_ms:.1f} ms",
        f"prompt {server.prompt_tokens} tok" + (f" in {server.prompt_ms:.1f} ms" if server.prompt_ms else ""),
    ]
    if server.generated_tokens:
        parts.append(f"generated {server.generated_tokens} tok in {server.generated_ms or 0:.1f} ms")
    if server.tokens_per_second:
        parts.append(f"{server.tokens_per_second:.1f} tok/s")
    return f"model {timing.model}; " + ", ".join(parts)


DEMO_MEMORY = (
    "On Monday the payments team found that the nightly reconciliation job had failed silently for three days. "
    "The bank had rotated its SFTP host key on Friday, the client refused to connect, and the job logged the "
    "exception at debug level, so nobody saw it. Maria noticed that its run time had dropped from twelve minutes "
    "to four seconds. The team decided that batch jobs must fail loudly, pin host keys in configuration, and "
    "report their processed row count to the metrics store so that a drop to zero shows on the dashboard."
)


DEMO_EVENTS = [
    {"id": "e1", "timestamp": "2026-11-02T09:14:00Z", "event_type": "incident",
     "content": "The nightly reconciliation job failed silently for three days.", "tags": ["batch"]},
    {"id": "e2", "timestamp": "2026-11-02T11:40:00Z", "event_type": "decision",
     "content": "Every batch job must exit non-zero on any exception and page on-call.", "tags": ["batch"]},
    {"id": "e3", "timestamp": "2026-11-05T09:45:00Z", "event_type": "decision",
     "content": "Batch jobs report their processed row count so a drop to zero shows on the dashboard.", "tags": ["metrics"]},
]


def demo(sender: TaskSender, timeout: float = 300) -> None:
    """One short job through every queue that has tasks, printed with its timing."""
    jobs = [
        (TaskName.EMBED, EmbedRequest(text="Athena remembers what matters.")),
        (TaskName.EMBED_BATCH, EmbedBatchRequest(texts=["The deploy failed at 3am.", "We rolled back to v2.3."])),
        (TaskName.REASON, ReasonRequest(prompt="In one sentence: why keep a backlog in a queue?", max_tokens=48, temperature=0.2)),
        (TaskName.COMPRESS_PROMPT, CompressRequest(context=DEMO_MEMORY, instruction="Summarise the incident.", rate=0.5)),
    ]
    pending = [(task, sender.send(task, request)) for task, request in jobs]
    for task, result in pending:
        out = sender.wait(task, result, timeout)
        if task is TaskName.EMBED:
            summary = f"{out.dimension}-d vector, first values {[round(v, 4) for v in out.embedding[:3]]}"
        elif task is TaskName.EMBED_BATCH:
            summary = f"{len(out.embeddings)} vectors of {out.dimension} dimensions"
        elif task is TaskName.REASON:
            summary = repr(out.text.strip()[:200])
        elif out.compressed:
            summary = (f"{out.original_tokens} -> {out.compressed_tokens} tokens ({out.ratio:.0%} kept, {out.method}), "
                       f"{out.compressed_prompt[:120]!r}...")
        else:
            summary = f"not compressed: {out.reason}"
        print(f"\n{task.value} on '{out.timing.queue}': {summary}\n    {describe(out.timing)}", flush=True)
    consolidated = sender.consolidation(DEMO_EVENTS, max_patterns=2)
    stages = ", ".join(f"{s.stage} on {s.queue} {s.run_ms:.0f} ms" for s in consolidated.stages)
    print(f"\n{TaskName.CONSOLIDATE.value}: {len(DEMO_EVENTS)} events -> {len(consolidated.patterns)} patterns", flush=True)
    for pattern in consolidated.patterns:
        print(f"    {pattern.type} ({pattern.confidence:.2f}, from {', '.join(pattern.source_events)}): {pattern.description[:100]}")
    print(f"    {stages}; end to end {consolidated.total_ms:.0f} ms", flush=True)


def demo_reembed(sender: TaskSender, workdir: Path, timeout: float = 120) -> None:
    """A three-memory store re-embedded by the jobs worker through the bulk lane."""
    workdir.mkdir(parents=True, exist_ok=True)
    source, output = workdir / "memories.jsonl", workdir / "vectors.npy"
    source.write_text("".join(json.dumps({"id": i, "content": e["content"]}) + "\n" for i, e in enumerate(DEMO_EVENTS)))
    job_id = sender.reembed(JsonlSource(path=str(source), output=str(output)))
    deadline = time.monotonic() + timeout
    for state in iter_progress(sender.jobs, job_id, interval_s=0.2):
        if not state.status.terminal and time.monotonic() > deadline:
            raise ConfigurationError(f"re-embedding job {job_id} did not finish in {timeout:.0f} s")
    if state.status is not JobStatus.COMPLETED:
        raise ConfigurationError(f"re-embedding job {job_id} ended {state.status.value}: {state.error}")
    seconds = (state.finished_at - state.started_at).total_seconds()
    print(
        f"\n{TaskName.REEMBED.value} on 'jobs': {state.counts.total} memories -> {output} "
        f"({state.counts.completed} embedded, {state.counts.skipped} unchanged since the last run; "
        f"{state.model} on the bulk lane, {seconds * 1000:.0f} ms)",
        flush=True,
    )


def up(settings: Settings, *, check_only: bool = False) -> int:
    if not PROCFILE.exists():
        raise ConfigurationError(f"no Procfile at {PROCFILE}; run `up` from a checkout of the project")
    provision(settings)
    names = process_names(settings)
    auth = flower_auth(settings)
    env = dict(os.environ, ATHENA_FLOWER_BASIC_AUTH=auth, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    honcho = [str(Path(sys.executable).parent / "honcho"), "start", "-f", str(PROCFILE), "-d", str(PROCFILE.parent), *names]
    say("starting: " + ", ".join(names))
    stack = subprocess.Popen(honcho, env=env, start_new_session=check_only)
    sender = TaskSender(settings.broker_url, settings.result_backend)
    try:
        wait_ready(settings, sender, alive=lambda: stack.poll() is None)
        demo(sender)
        demo_reembed(sender, settings.cache_dir / "demo")
        user, _, password = auth.partition(":")
        say(f"stack is up. Flower: http://127.0.0.1:{settings.flower_port} (user {user}, password {password})")
        say(f"metrics: athena-inference metrics; Prometheus: http://{settings.exporter_address}:{settings.exporter_port}/metrics")
        say("health: athena-inference health    stop: Ctrl-C")
        if check_only:
            return 0
        return stack.wait()
    except KeyboardInterrupt:
        say("stopping every process of the stack")
        return 0
    except AthenaError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        sender.close()
        _stop(stack)


def _stop(stack: subprocess.Popen, grace: float = 20) -> None:
    if stack.poll() is None:
        stack.send_signal(signal.SIGTERM)
    try:
        stack.wait(grace)
    except subprocess.TimeoutExpired:
        stack.kill()
        stack.wait()
