"""The queue's CPU per embed, process by process, against a bare Celery task making the same HTTP call.

    .venv/bin/python -m bench.queue_cpu [--embeds 300] [--at-once 1] [--idle-s 5] [--json out.json]

Starts the stack as `athena-inference up` does (its Redis, servers, one worker
per queue, Flower, the exporter), on free ports, and beside it a bare Celery
worker (`bench/bare_celery.py`: the same thread pool and concurrency, acks_late,
no events) on other databases of the same Redis, in front of the same
embeddings llama-server. Then `--embeds` distinct short memories go through
`AthenaClient.embed`, and as many through the bare task (`delay(...).get()`),
`--at-once` at a time (1: one after the other, the latency path; 32: a burst
as Athena's `asyncio.gather` sends one), and every process's CPU time is added
up over each run: the client (this process), the worker, Flower, redis-server,
the model server, and the stack's idle processes.

A process's CPU over a run includes what it spends with nothing to do
(Flower's and the workers' timers and heartbeats). So before the runs each
process's CPU is also read over `--idle-s` quiet seconds, and the tables give
each figure twice: as measured, and less that idle rate over the run's length
(what the embeds themselves cost). The figure that matters is the sum outside
the model server, per embed, and its ratio to the bare task's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
CLIENT = "client (this process)"


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
    seconds: dict[str, float] = {CLIENT: time.process_time()}
    for pid in descendants(up.popen.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name = role(args, up.env)
        name = {"embeddings worker": "worker", "other workers (idle)": "the stack's idle processes",
                "other llama-servers": "the stack's idle processes", "exporter": "the stack's idle processes",
                "up, honcho, wrappers": "honcho (relays every process's log lines)"}.get(name, name)
        seconds[name] = seconds.get(name, 0.0) + process_cpu({pid})
    seconds["worker (bare Celery)"] = process_cpu({bare_pid, *descendants(bare_pid)})
    return seconds


def idle_rates(up: UpStack, bare_pid: int, seconds: float) -> dict[str, float]:
    """CPU seconds per second of each role with nothing sent (this process sleeps, so it has none)."""
    before = cpu_by_role(up, bare_pid)
    time.sleep(seconds)
    after = cpu_by_role(up, bare_pid)
    rates = {name: max(0.0, after[name] - before.get(name, 0.0)) / seconds for name in after}
    rates[CLIENT] = 0.0
    return rates


def settled_cpu(up: UpStack, bare_pid: int, idle: dict[str, float], step_s: float = 0.25, longest_s: float = 20.0) -> dict[str, float]:
    """Every role's CPU once no process spends more than its idle rate (plus 2 ms) over a step."""
    last = cpu_by_role(up, bare_pid)
    deadline = time.monotonic() + longest_s
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = cpu_by_role(up, bare_pid)
        if all(now[name] - last.get(name, 0.0) <= idle.get(name, 0.0) * step_s + 0.002 for name in now if name != CLIENT):
            return now
        last = now
    return last


def texts(count: int, tag: str) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {EVENTS[i % len(EVENTS)]} ({tag} memory {i})" for i in range(count)]


def run(label: str, call, items: list[str], at_once: int, up: UpStack, bare_pid: int, idle: dict[str, float]) -> dict:
    latencies: list[float] = []

    def timed(text: str) -> None:
        started = time.perf_counter()
        call(text)
        latencies.append((time.perf_counter() - started) * 1000)

    before, began = cpu_by_role(up, bare_pid), time.perf_counter()
    if at_once == 1:
        for text in items:
            timed(text)
    else:
        with ThreadPoolExecutor(at_once) as pool:
            for start in range(0, len(items), at_once):
                list(pool.map(timed, items[start : start + at_once]))
    latency_path_s = time.perf_counter() - began
    # Flower reads the run's events on its own time: what it spends after the last result is the run's too.
    after = settled_cpu(up, bare_pid, idle)
    elapsed = time.perf_counter() - began
    measured = {name: (after[name] - before.get(name, 0.0)) * 1000 / len(items) for name in after}
    net = {name: max(0.0, ms - idle.get(name, 0.0) * elapsed * 1000 / len(items)) for name, ms in measured.items()}
    outside = {kind: sum(ms for name, ms in figures.items() if name != MODEL) for kind, figures in (("measured", measured), ("net", net))}
    print(f"[bench] {label}: {len(items)} embeds, {at_once} at a time, p50 {statistics.median(latencies):.2f} ms, "
          f"{outside['measured']:.2f} CPU-ms an embed outside the model server ({outside['net']:.2f} less idle)", flush=True)
    return {"label": label, "p50_ms": statistics.median(latencies), "seconds": latency_path_s, "cpu_ms_per_embed": measured,
            "net_cpu_ms_per_embed": net, "outside_model_ms": outside["measured"], "net_outside_model_ms": outside["net"]}


def report(athena: dict, bare: dict, at_once: int) -> str:
    names = sorted(set(athena["cpu_ms_per_embed"]) | set(bare["cpu_ms_per_embed"]), key=lambda n: -athena["cpu_ms_per_embed"].get(n, 0.0))
    lines = [f"{at_once} at a time; CPU-ms per embed, as measured (less each process's idle CPU over the run)", "",
             "| process | athena.embed | bare Celery task |", "|---|---|---|"]
    for name in names:
        cells = [f"{run['cpu_ms_per_embed'].get(name, 0.0):.2f} ({run['net_cpu_ms_per_embed'].get(name, 0.0):.2f})" for run in (athena, bare)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines.append(f"| **outside the model server** | **{athena['outside_model_ms']:.2f} ({athena['net_outside_model_ms']:.2f})** "
                 f"| **{bare['outside_model_ms']:.2f} ({bare['net_outside_model_ms']:.2f})** |")
    lines.append(f"\nratio outside the model server: {athena['outside_model_ms'] / bare['outside_model_ms']:.2f}x as measured, "
                 f"{athena['net_outside_model_ms'] / bare['net_outside_model_ms']:.2f}x less idle; "
                 f"p50 {athena['p50_ms']:.2f} ms against {bare['p50_ms']:.2f} ms")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeds", type=int, default=300)
    parser.add_argument("--at-once", type=int, default=1)
    parser.add_argument("--idle-s", type=float, default=5.0)
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
            idle = idle_rates(up, bare.pid, args.idle_s)
            athena = run("athena.embed", client.embed, texts(args.embeds, "athena"), args.at_once, up, bare.pid, idle)
            peer = run("bare Celery task", lambda text: bare_celery.embed.delay(text).get(timeout=60), texts(args.embeds, "bare"),
                       args.at_once, up, bare.pid, idle)
        emit("\n" + report(athena, peer, args.at_once), {"athena": athena, "bare": peer, "idle_cpu_s_per_s": idle}, args.json)
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(timeout=30)
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
