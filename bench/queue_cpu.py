"""The queue's CPU per embed, process by process, against a bare Celery task making the same HTTP call.

    .venv/bin/python -m bench.queue_cpu [--embeds 300] [--json out.json]

Starts the stack as `athena-inference up` does (its Redis, servers, one worker
per queue, Flower, the exporter), on free ports, and beside it a bare Celery
worker (`bench/bare_celery.py`: the same thread pool and concurrency, acks_late,
no events) on other databases of the same Redis, in front of the same
embeddings llama-server. Then, one at a time, `--embeds` distinct short
memories go through `AthenaClient.embed`, and as many through the bare task
(`delay(...).get()`), and every process's CPU time is added up over each run:
the client (this process), the worker, Flower, redis-server, the model server,
and the stack's idle processes. The figure that matters is the sum outside the
model server, per embed, and its ratio to the bare task's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from athena_client import AthenaClient
from athena_client.contract.routes import Queue
from athena_client.shared_redis.metrics import with_database
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import UpStack, descendants, wait_for
from athena_inference.workers.ops.processes import worker_concurrency
from athena_inference.workers.ops.provision import provision
from bench.batching import EVENTS, SUBJECTS, TICKS, role
from bench.output import emit

MODEL = "embeddings llama-server"


def process_cpu(pids: set[int]) -> float:
    seconds = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds += (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def cpu_by_role(up: UpStack, bare_pid: int) -> dict[str, float]:
    seconds: dict[str, float] = {"client (this process)": time.process_time()}
    for pid in descendants(up.popen.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name = role(args, up.env)
        name = {"embeddings worker": "worker", "other workers (idle)": "the stack's idle processes",
                "other llama-servers": "the stack's idle processes", "exporter": "the stack's idle processes",
                "up, honcho, wrappers": "the stack's idle processes"}.get(name, name)
        seconds[name] = seconds.get(name, 0.0) + process_cpu({pid})
    seconds["worker (bare Celery)"] = process_cpu({bare_pid, *descendants(bare_pid)})
    return seconds


def texts(count: int, tag: str) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {EVENTS[i % len(EVENTS)]} ({tag} memory {i})" for i in range(count)]


def run(label: str, call, items: list[str], up: UpStack, bare_pid: int) -> dict:
    before = cpu_by_role(up, bare_pid)
    latencies = []
    for text in items:
        started = time.perf_counter()
        call(text)
        latencies.append((time.perf_counter() - started) * 1000)
    after = cpu_by_role(up, bare_pid)
    per_embed = {name: (after[name] - before.get(name, 0.0)) * 1000 / len(items) for name in after}
    outside = sum(ms for name, ms in per_embed.items() if name != MODEL)
    print(f"[bench] {label}: {len(items)} embeds, p50 {statistics.median(latencies):.2f} ms, "
          f"{outside:.2f} CPU-ms an embed outside the model server", flush=True)
    return {"label": label, "p50_ms": statistics.median(latencies), "cpu_ms_per_embed": per_embed, "outside_model_ms": outside}


def report(athena: dict, bare: dict) -> str:
    names = sorted(set(athena["cpu_ms_per_embed"]) | set(bare["cpu_ms_per_embed"]), key=lambda n: -athena["cpu_ms_per_embed"].get(n, 0.0))
    lines = ["| process | athena.embed CPU-ms | bare Celery task CPU-ms |", "|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {athena['cpu_ms_per_embed'].get(name, 0.0):.2f} | {bare['cpu_ms_per_embed'].get(name, 0.0):.2f} |")
    lines.append(f"| **outside the model server** | **{athena['outside_model_ms']:.2f}** | **{bare['outside_model_ms']:.2f}** |")
    lines.append(f"\nratio outside the model server: {athena['outside_model_ms'] / bare['outside_model_ms']:.2f}x; "
                 f"p50 {athena['p50_ms']:.2f} ms against {bare['p50_ms']:.2f} ms")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeds", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    provision(load_settings())
    up = UpStack(Path(tempfile.mkdtemp(prefix="athena-queue-cpu-")))
    bare = None
    try:
        broker, backend = up.url("ATHENA_BROKER_URL"), up.url("ATHENA_RESULT_BACKEND")
        bare_env = dict(os.environ, BARE_BROKER_URL=with_database(broker, 10), BARE_RESULT_BACKEND=with_database(backend, 11),
                        BARE_EMBEDDINGS_URL=up.env["LLAMACPP_EMBEDDINGS_URL"])
        # The same thread pool and concurrency as the embeddings worker.
        concurrency = worker_concurrency(Queue.EMBEDDINGS, load_settings())
        bare = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.bare_celery", "worker", "-Q", "bare", "-P", "threads", "-c", str(concurrency),
             "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
            env=bare_env, cwd=Path(__file__).resolve().parent.parent,
        )
        os.environ.update({k: bare_env[k] for k in ("BARE_BROKER_URL", "BARE_RESULT_BACKEND", "BARE_EMBEDDINGS_URL")})
        from bench import bare_celery

        bare_celery.app.conf.broker_url, bare_celery.app.conf.result_backend = bare_env["BARE_BROKER_URL"], bare_env["BARE_RESULT_BACKEND"]
        with AthenaClient(broker, backend, timeout=60) as client:
            wait_for(lambda: bare_celery.app.control.ping(timeout=1.0), "the bare Celery worker", 60)
            for text in texts(20, "warm-up"):
                client.embed(text)
                bare_celery.embed.delay(text).get(timeout=60)
            athena = run("athena.embed", client.embed, texts(args.embeds, "athena"), up, bare.pid)
            peer = run("bare Celery task", lambda text: bare_celery.embed.delay(text).get(timeout=60), texts(args.embeds, "bare"), up, bare.pid)
        emit("\n" + report(athena, peer), {"athena": athena, "bare": peer}, args.json)
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(timeout=30)
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
