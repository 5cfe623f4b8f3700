"""A production day's faults, against real processes, in one table (docs/reliability.md).

    .venv/bin/python -m bench.faults             # the full day, about 15 minutes
    .venv/bin/python -m bench.faults --short     # the short form, about 3 minutes

One stack of its own: its embedded Redis (`serve redis`: append-only file, a
password), every lane's llama-server, a worker per queue, started with the same
`athena-inference` commands as the Procfile. Then, one after the other:

1. pool processes killed with SIGKILL, each while it runs a task, under a steady
   load of embeds and generations (the threaded embeddings worker has no pool
   process; the reasoning worker's are hit);
2. the embeddings server killed, and started again after an outage, while
   embeds are sent (in flight and queued);
3. Redis restarted under a steady load of embeds, a result written before read after;
4. a task whose worker dies every time it runs it (a poison message);
5. malformed payloads to every task (`athena_inference.workers.ops.sample_payloads`), and whether every
   worker still answers afterwards;
6. SIGTERM to `athena-inference up` (a stack of its own), and the processes left.

"Lost" is a task with no result by the end of its row's wait: neither success
nor a typed failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from athena_client.client import AthenaClient
from athena_client.contract.errors import AthenaError, ServerTimeout
from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import TaskName, queue_for
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import (
    ALL_QUEUES, Proc, RestartableRedis, Stack, UpStack, alive, answering, children, descendants, endless_generation,
    local_stack_env, redis_port,
)
from athena_inference.workers.ops.provision import provision
from athena_inference.workers.ops.sample_payloads import sample
from athena_inference.workers.ops.stack import with_password

PASSWORD = "faults-bench-7c2e"
SHORT = dict(kills=4, outage_s=10.0, restart_tasks=30, malformed=120)
FULL = dict(kills=20, outage_s=30.0, restart_tasks=60, malformed=500)


@dataclass
class Row:
    fault: str
    sent: int = 0
    succeeded: int = 0
    failed_typed: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


# --- waiting for results ---


def outcome(client: AthenaClient, task: TaskName, task_id: str, deadline: float) -> str:
    """"success", "typed: <class>", "untyped: <class>" or "lost" once `deadline` passes with no answer.

    A failed read (Redis away) is waited out like no answer yet; a task's own error is final.
    """
    while True:
        try:
            client.result(task, task_id, timeout=5)
            return "success"
        except ServerTimeout:
            pass
        except AthenaError as exc:
            if type(exc) is not AthenaError:
                return f"typed: {exc.__class__.__name__}"
            if "failed:" in str(exc):
                return f"untyped: {str(exc).split('failed: ', 1)[1].split(':', 1)[0]}"
        if time.monotonic() >= deadline:
            return "lost"


def whereabouts(client: AthenaClient, task_id: str) -> str:
    """Where a task with no answer is: still queued, taken but unacknowledged, or nowhere."""
    with client.app.connection_for_write() as connection:
        redis_client = connection.default_channel.client
        if redis_client.hexists("unacked", task_id) or any(
            task_id.encode() in raw for raw in redis_client.hvals("unacked")
        ):
            return "unacknowledged"
        for queue in ALL_QUEUES:
            if any(task_id.encode() in raw for raw in redis_client.lrange(queue, 0, -1)):
                return f"queued on {queue}"
    return f"nowhere (state {client.app.AsyncResult(task_id).state})"


def tally(row: Row, outcomes: list[str]) -> Row:
    row.sent += len(outcomes)
    row.succeeded += outcomes.count("success")
    row.failed_typed += sum(o.startswith("typed") for o in outcomes)
    row.lost += outcomes.count("lost")
    untyped = [o for o in outcomes if o.startswith("untyped")]
    if untyped:
        row.notes.append(f"{len(untyped)} untyped: {sorted(set(untyped))}")
    return row


class Load:
    """Tasks sent at a steady pace from a thread, until stopped."""

    def __init__(self, client: AthenaClient, make: Callable[[int], tuple[TaskName, object]], interval_s: float) -> None:
        self.client, self.make, self.interval_s = client, make, interval_s
        self.sent: list[tuple[TaskName, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            task, request = self.make(i)
            try:
                self.sent.append((task, self.client.submit(task, request)))
            except Exception as exc:  # noqa: BLE001 - a send that failed is reported, not hidden
                self.errors.append(f"{exc.__class__.__name__}: {exc}")
            i += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def outcomes(self, wait_s: float, row: Row) -> list[str]:
        deadline = time.monotonic() + wait_s
        found = [outcome(self.client, task, task_id, deadline) for task, task_id in self.sent]
        lost = [task_id for (_, task_id), o in zip(self.sent, found) if o == "lost"]
        row.notes += [f"lost {task_id}: {whereabouts(self.client, task_id)}" for task_id in lost]
        if self.errors:
            row.notes.append(f"{len(self.errors)} sends failed: {sorted(set(self.errors))[:3]}")
        return found


def mixed_load(i: int) -> tuple[TaskName, object]:
    if i % 10 == 9:
        return TaskName.REASON, ReasonRequest(prompt=f"In one sentence: why does memory {i} matter?", max_tokens=48, temperature=0.2)
    return TaskName.EMBED, EmbedRequest(text=f"memory {i}: the payments team reviewed the nightly reconciliation")


# --- the processes ---


class Day:
    """The stack the first five faults hit."""

    def __init__(self, workdir: Path) -> None:
        self.env = local_stack_env(LLAMACPP_N_THREADS="1", ATHENA_REDIS_PASSWORD=PASSWORD)
        for name in ("ATHENA_BROKER_URL", "ATHENA_RESULT_BACKEND"):
            self.env[name] = with_password(self.env[name], PASSWORD)
        self.stack = Stack(workdir, self.env)
        self.redis = RestartableRedis(self.stack, redis_port(self.env), workdir / "cache", PASSWORD)
        self.embeddings_server = self.stack.llama("embeddings", self.env["LLAMACPP_EMBEDDINGS_URL"])
        self.stack.llama("reasoning", self.env["LLAMACPP_REASONING_URL"])
        self.stack.llama("embeddings-bulk", self.env["ATHENA_EMBEDDINGS_BULK_URL"])
        self.workers: dict[str, Proc] = {queue: self.stack.worker(queue, "day") for queue in ALL_QUEUES}
        self.client = AthenaClient(self.env["ATHENA_BROKER_URL"], self.env["ATHENA_RESULT_BACKEND"], timeout=60)
        self.stack.wait_for_workers(self.client, {f"{queue}@day" for queue in ALL_QUEUES}, timeout=180)

    def pool_processes(self, *queues: str) -> list[int]:
        return [pid for queue in queues for pid in children(self.workers[queue].popen.pid)]

    def close(self) -> None:
        self.client.close()
        self.stack.stop_all()


def pool_kills(day: Day, kills: int) -> Row:
    row = Row(f"SIGKILL of a pool process running a task, {kills} times under load")
    # A task whose process dies under it max_deliveries times is a poison
    # message (its own row): here no task is hit that often.
    spare = load_settings().max_deliveries - 1
    hits: dict[str, int] = {}
    with Load(day.client, mixed_load, 0.1) as load:
        time.sleep(2)
        for _ in range(kills):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not kill_a_busy_pool_process(day, hits, spare):
                time.sleep(0.05)
            time.sleep(1.5)
    row.figures["kills"] = sum(hits.values())
    row.figures["tasks_hit"] = len(hits)
    return tally(row, load.outcomes(180, row))


def kill_a_busy_pool_process(day: Day, hits: dict[str, int], spare: int) -> bool:
    """SIGKILL to a pool process (prefork; a threads pool has none) running a
    task hit fewer than `spare` times; False if there is none, or it ended first."""
    pool = set(day.pool_processes(*ALL_QUEUES))
    for tasks in (day.client.app.control.inspect(timeout=1.0).active() or {}).values():
        for task in tasks:
            if task.get("worker_pid") in pool and hits.get(task["id"], 0) < spare:
                try:
                    os.kill(task["worker_pid"], signal.SIGKILL)
                except ProcessLookupError:
                    return False
                hits[task["id"]] = hits.get(task["id"], 0) + 1
                return True
    return False


def server_restart(day: Day, outage_s: float) -> Row:
    row = Row(f"embeddings server SIGKILLed, back after {outage_s:.0f} s")
    day.embeddings_server.stop(signal.SIGKILL)
    began = time.monotonic()
    with Load(day.client, lambda i: (TaskName.EMBED, EmbedRequest(text=f"memory {i} while the server is down")), 1.0) as load:
        time.sleep(outage_s)
        day.embeddings_server = day.stack.llama("embeddings", day.env["LLAMACPP_EMBEDDINGS_URL"])
        row.figures["server_back_after_s"] = round(time.monotonic() - began, 1)
        time.sleep(5)
    return tally(row, load.outcomes(180, row))


def redis_restart(day: Day, tasks: int) -> Row:
    row = Row("Redis restarted under load")
    kept = day.client.submit(TaskName.EMBED, EmbedRequest(text="a result written before the restart"))
    before = day.client.result(TaskName.EMBED, kept, keep=True).embedding
    stopped = threading.Event()
    with Load(day.client, lambda i: (TaskName.EMBED, EmbedRequest(text=f"memory {i} across a Redis restart")), 1 / 3) as load:
        time.sleep(tasks / 3 / 3)
        gap = day.redis.restart(stopped, 3.0)
        time.sleep(tasks / 3 * 2 / 3)
    row.figures["redis_away_s"] = round(gap, 2)
    tally(row, load.outcomes(120, row))
    after = day.client.result(TaskName.EMBED, kept, timeout=30, keep=True).embedding
    row.figures["result_readable_after"] = after == before
    return row


def poison(day: Day) -> Row:
    row = Row("a task whose worker dies each time it runs it")
    task_id = day.client.submit(TaskName.REASON, endless_generation("Write a long story about a lighthouse keeper."))
    killed: set[int] = set()
    # Every delivery that runs is killed, up to the limit. The next one must be refused,
    # not run: killing it too would race that refusal (inspect can list it as active
    # for the moment before it fails), and had it run, it would not end in PoisonMessage.
    while len(killed) < load_settings().max_deliveries:
        pid = running(day.client, task_id, killed, timeout=30)
        if pid is None:
            break
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    result = outcome(day.client, TaskName.REASON, task_id, time.monotonic() + 60)
    row.figures["deliveries_before_typed_failure"] = len(killed)
    row.figures["result"] = result
    return tally(row, [result])


def running(client: AthenaClient, task_id: str, killed: set[int], timeout: float) -> Optional[int]:
    """The pid of the worker process running `task_id` now; None once it no longer runs (it ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.app.AsyncResult(task_id).state in ("SUCCESS", "FAILURE"):
            return None
        for tasks in (client.app.control.inspect(timeout=1.0).active() or {}).values():
            for task in tasks:
                if task["id"] == task_id and task.get("worker_pid") and task["worker_pid"] not in killed:
                    return task["worker_pid"]
        time.sleep(0.1)
    return None


def malformed(day: Day, count: int) -> Row:
    row = Row(f"{count} malformed payloads across every task")
    before = {queue: proc.popen.pid for queue, proc in day.workers.items()}
    sent = []
    for task, args, kwargs, _ in sample(count, seed=11):
        pending = day.client.app.send_task(task.value, args=args, kwargs=kwargs, queue=queue_for(task.value).value)
        sent.append((task, pending.id))
    deadline = time.monotonic() + 120
    outcomes = [outcome(day.client, task, task_id, deadline) for task, task_id in sent]
    tally(row, outcomes)
    typed = [o for o in outcomes if o.startswith("typed")]
    row.figures["invalid_input"] = sum(o in ("typed: InvalidInput", "typed: InputTooLong") for o in typed)
    row.figures["untyped"] = sum(o.startswith("untyped") for o in outcomes) + outcomes.count("success")
    row.figures["worker_mains_lost"] = sum(not alive(pid) for pid in before.values())
    row.figures["workers_answering_after"] = len(answering(day.client, timeout=2.0))
    return row


def sigterm_to_up(workdir: Path) -> Row:
    row = Row("SIGTERM to `athena-inference up`")
    try:
        up = UpStack(workdir).popen
    except RuntimeError as exc:
        row.notes.append(str(exc).splitlines()[0])
        return row
    started = descendants(up.pid)
    os.kill(up.pid, signal.SIGTERM)
    code = up.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in started):
        time.sleep(0.5)
    row.figures.update(processes_started=len(started), processes_left=sum(alive(pid) for pid in started), up_exit_code=code)
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    return row


def table(rows: list[Row]) -> str:
    lines = ["| fault | sent | succeeded | failed (typed) | lost | figures |", "|---|---|---|---|---|---|"]
    for r in rows:
        figures = ", ".join(f"{k} {v}" for k, v in r.figures.items())
        notes = "; ".join(r.notes)
        lines.append(f"| {r.fault} | {r.sent} | {r.succeeded} | {r.failed_typed} | {r.lost} | {figures}{'; ' + notes if notes else ''} |")
    return "\n".join(lines)


def run(plan: dict, workdir: Path) -> list[Row]:
    """Every fault of `plan` (SHORT or FULL), one after the other, against stacks under `workdir`."""
    rows: list[Row] = []
    day = Day(workdir)
    try:
        rows.append(pool_kills(day, plan["kills"]))
        rows.append(server_restart(day, plan["outage_s"]))
        rows.append(redis_restart(day, plan["restart_tasks"]))
        rows.append(poison(day))
        rows.append(malformed(day, plan["malformed"]))
    finally:
        day.close()
    rows.append(sigterm_to_up(workdir))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI's short form")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    provision(load_settings())
    with tempfile.TemporaryDirectory(prefix="athena-faults-") as tmp:
        rows = run(SHORT if args.short else FULL, Path(tmp))
    print(table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
