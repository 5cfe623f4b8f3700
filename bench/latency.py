"""Where an embed's time goes through the queue, against a direct call to the same server.

    .venv/bin/python -m bench.latency [--calls 300] [--pools prefork,threads] [--stack up|minimal] [--json out.json]

For each embeddings worker pool in `--pools` (`ATHENA_EMBEDDINGS_POOL`), starts
the whole stack as `athena-inference up` does (on free ports, with its demo,
Flower and the exporter; `--stack minimal`: Redis, the embeddings server and
its worker alone), then:

- sends `--calls` single embeds one after the other through `AthenaClient.embed`'s
  path (submit, then wait for the result), each followed by the same text
  straight to the server over a kept-alive HTTP connection (the peer: what a
  caller would do without the queue), so both see the same machine at the same moment;
- splits each queued call by the timestamps the client, the worker's task
  events (the worker runs with -E, as in the stack) and the task's own timing give:

  send         the client's `send_task` (serialise, publish to Redis)
  to worker    publish returned -> the worker's main process has the message (task-received)
  hand-off     task-received -> the task body starts (prefork: to a pool process and back)
  in task      the body's own work around its HTTP call (delivery count,
               validation, breaker, result model)
  server       the HTTP request to llama-server, as the worker timed it
  to client    body done -> the client has the typed result (result serialised,
               written and published to Redis, read by the client's subscription)

Metrics and the rest of a task's bookkeeping happen after its result is
stored, so no stage holds them.

The medians of those stages are printed per pool, then p50/p95 of the whole
call against the direct call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

from athena_client.client import AthenaClient
from athena_client.contract.payloads import EmbeddingResult, EmbedRequest
from athena_client.contract.routes import TaskName
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import Stack, UpStack, local_stack_env, redis_port, wait_for
from athena_inference.workers.ops.provision import provision
from bench.output import emit

TEXT = "the payments team reviewed the nightly reconciliation job after the outage"
STAGES = ("send", "to worker", "hand-off", "in task", "server", "to client")


class Events:
    """The worker's task-received events, by task id: {event type: its timestamp}."""

    def __init__(self, client: AthenaClient) -> None:
        self.app = client.app
        self.seen: dict[str, dict[str, float]] = {}
        self._ready = threading.Event()
        self._receiver = None
        threading.Thread(target=self._listen, daemon=True).start()
        self._ready.wait(10)

    def _listen(self) -> None:
        def on_event(event: dict) -> None:
            self.seen.setdefault(event["uuid"], {})[event["type"]] = event["timestamp"]

        with self.app.connection_for_read() as connection:
            handlers = {"task-received": on_event}
            self._receiver = self.app.events.Receiver(connection, handlers=handlers)
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def wait_for(self, task_id: str, kind: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while kind not in self.seen.get(task_id, {}):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} event for {task_id}")
            time.sleep(0.001)
        return self.seen[task_id][kind]

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True


def epoch(value: datetime) -> float:
    return value.timestamp()


def queued_call(client: AthenaClient, events: Events) -> tuple[float, dict[str, float]]:
    began = time.time()
    task_id = client.submit(TaskName.EMBED, EmbedRequest(text=TEXT))
    sent = time.time()
    result: EmbeddingResult = client.result(TaskName.EMBED, task_id, timeout=30)
    done = time.time()
    timing = result.timing
    received = events.wait_for(task_id, "task-received")
    started, finished = epoch(timing.started_at), epoch(timing.finished_at)
    server_ms = timing.server.request_ms
    stages = {
        "send": (sent - began) * 1000,
        "to worker": (received - sent) * 1000,
        "hand-off": (started - received) * 1000,
        "in task": timing.run_ms - server_ms,
        "server": server_ms,
        "to client": (done - finished) * 1000,
    }
    return (done - began) * 1000, stages


def direct_call(http: httpx.Client, url: str) -> float:
    began = time.perf_counter()
    response = http.post(f"{url}/v1/embeddings", json={"input": [TEXT]})
    response.raise_for_status()
    assert len(response.json()["data"][0]["embedding"]) == 384
    return (time.perf_counter() - began) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(client: AthenaClient, url: str, calls: int, label: str) -> dict:
    events = Events(client)
    http = httpx.Client(timeout=30)
    try:
        for _ in range(20):
            queued_call(client, events)
            direct_call(http, url)
        queued, direct, stages = [], [], {name: [] for name in STAGES}
        for _ in range(calls):
            total, split = queued_call(client, events)
            queued.append(total)
            direct.append(direct_call(http, url))
            for name, value in split.items():
                stages[name].append(value)
        return {
            "pool": label,
            "calls": calls,
            "queued_p50_ms": statistics.median(queued),
            "queued_p95_ms": pct(queued, 0.95),
            "direct_p50_ms": statistics.median(direct),
            "direct_p95_ms": pct(direct, 0.95),
            "stages_p50_ms": {name: statistics.median(values) for name, values in stages.items()},
        }
    finally:
        events.stop()
        http.close()


def on_minimal_stack(stack: Stack, pool: str, calls: int) -> dict:
    worker = stack.worker("embeddings", f"latency-{pool}", {"ATHENA_EMBEDDINGS_POOL": pool})
    client = AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"], timeout=30)
    try:
        wait_for(lambda: client.embed("warm up").dimension == 384, f"the {pool} worker", 120, worker)
        return measure(client, stack.env["LLAMACPP_EMBEDDINGS_URL"], calls, pool)
    finally:
        client.close()
        worker.stop()


def on_up(workdir: Path, pool: str, calls: int) -> dict:
    up = UpStack(workdir / pool, ATHENA_EMBEDDINGS_POOL=pool)
    client = AthenaClient(up.url("ATHENA_BROKER_URL"), up.url("ATHENA_RESULT_BACKEND"), timeout=30)
    try:
        return measure(client, up.env["LLAMACPP_EMBEDDINGS_URL"], calls, pool)
    finally:
        client.close()
        up.stop()


def report(rows: list[dict]) -> str:
    lines = ["| stage (median ms) | " + " | ".join(r["pool"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name in STAGES:
        lines.append(f"| {name} | " + " | ".join(f"{r['stages_p50_ms'][name]:.2f}" for r in rows) + " |")
    lines.append("| **queued p50 / p95** | " + " | ".join(f"{r['queued_p50_ms']:.2f} / {r['queued_p95_ms']:.2f}" for r in rows) + " |")
    lines.append("| direct p50 / p95 (same run) | " + " | ".join(f"{r['direct_p50_ms']:.2f} / {r['direct_p95_ms']:.2f}" for r in rows) + " |")
    lines.append(
        "| **queue adds, p50** | " + " | ".join(f"{r['queued_p50_ms'] - r['direct_p50_ms']:+.2f}" for r in rows) + " |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--pools", default="prefork,threads")
    parser.add_argument(
        "--stack", choices=("up", "minimal"), default="up",
        help="up: the whole stack `athena-inference up` starts (servers, every worker, Flower, exporter); "
        "minimal: Redis, the embeddings server and its worker alone",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    provision(load_settings())
    pools = args.pools.split(",")
    with tempfile.TemporaryDirectory(prefix="athena-latency-") as tmp:
        if args.stack == "up":
            rows = [on_up(Path(tmp), pool, args.calls) for pool in pools]
        else:
            stack = Stack(Path(tmp), local_stack_env(LLAMACPP_N_THREADS="1"))
            try:
                stack.redis(redis_port(stack.env))
                stack.llama("embeddings", stack.env["LLAMACPP_EMBEDDINGS_URL"])
                rows = [on_minimal_stack(stack, pool, args.calls) for pool in pools]
            finally:
                stack.stop_all()
    return emit(report(rows), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
