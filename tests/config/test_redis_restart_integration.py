"""A production day, survived: Redis restarts under a steady stream of embeds.

Its own Redis, through `athena-inference serve redis` (append-only file,
fsync every second, a password), an embeddings worker on it in front of the
session's embeddings server, and a client sending `athena.embed` four times
a second. Redis gets SIGTERM in the middle,
while a batch of 512 texts is running on the worker, and is started again on
the same port and folder after a pause, as a supervisor's restart (or a large
append-only file reloading) would leave it away for seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from athena_client import AthenaClient
from athena_client.contract.errors import AthenaError, ServerTimeout
from athena_client.contract.payloads import EmbedBatchRequest, EmbedRequest
from athena_client.contract.routes import TaskName
from athena_inference.workers.ops.stack import with_password
from tests.harness import RestartableRedis, Stack, local_stack_env, redis_port, wait_for

PASSWORD = "restart-Test-5a1e"
TASKS = 30
INTERVAL_S = 1 / 4
RESTART_AFTER = 10  # tasks sent before Redis gets SIGTERM
DOWN_S = 5.0  # between Redis's exit and its start again
BATCH = [f"memory {i} about the garden, the weekly report and the payments team" for i in range(512)]


@dataclass
class Run:
    sent: list[tuple[TaskName, str]] = field(default_factory=list)
    send_errors: list[str] = field(default_factory=list)
    gap_s: float = 0.0
    slowest_send_s: float = 0.0
    kept_id: str = ""
    kept_before: list[float] = field(default_factory=list)


@pytest.fixture(scope="module")
def restartable(stack, tmp_path_factory):
    """A Redis of its own, which the test restarts, and an embeddings worker on it in front of the session's server."""
    env = local_stack_env(ATHENA_REDIS_PASSWORD=PASSWORD, LLAMACPP_EMBEDDINGS_URL=stack.env["LLAMACPP_EMBEDDINGS_URL"])
    for name in ("ATHENA_BROKER_URL", "ATHENA_RESULT_BACKEND"):
        env[name] = with_password(env[name], PASSWORD)
    own = Stack(tmp_path_factory.mktemp("logs"), env)
    try:
        server = RestartableRedis(own, redis_port(env), tmp_path_factory.mktemp("cache"), PASSWORD)
        worker = own.worker("embeddings", "restart")
        client = AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=30)
        wait_for(lambda: client.embed("warm up").dimension == 384, "the embeddings worker", 120, worker)
        yield own, server, client, worker
        client.close()
    finally:
        own.stop_all()


def send_stream(client: AthenaClient, server: RestartableRedis) -> Run:
    run = Run()
    kept = client.submit(TaskName.EMBED, EmbedRequest(text="written before the restart"))
    run.kept_id, run.kept_before = kept, client.result(TaskName.EMBED, kept, keep=True).embedding
    stopped = threading.Event()
    restarter = threading.Thread(target=lambda: setattr(run, "gap_s", server.restart(stopped, DOWN_S)))
    for i in range(TASKS):
        if i == RESTART_AFTER:
            # Redis goes while the batch runs and the worker's other process waits
            # for work: a task in flight and room for more is what used to kill the worker.
            run.sent.append((TaskName.EMBED_BATCH, client.submit(TaskName.EMBED_BATCH, EmbedBatchRequest(texts=BATCH))))
            time.sleep(1.0)
            restarter.start()
            # The stream goes on once Redis is gone, so nothing else is running when it goes.
            stopped.wait(30)
        began = time.monotonic()
        try:
            run.sent.append((TaskName.EMBED, client.submit(TaskName.EMBED, EmbedRequest(text=f"memory {i} of a production day"))))
        except Exception as exc:  # noqa: BLE001 - counted and reported, not hidden
            run.send_errors.append(f"{i}: {exc.__class__.__name__}: {exc}")
        run.slowest_send_s = max(run.slowest_send_s, time.monotonic() - began)
        time.sleep(INTERVAL_S)
    restarter.join()
    return run


def outcome(client: AthenaClient, task: TaskName, task_id: str, deadline: float) -> str:
    """SUCCESS, or why not. Until `deadline` the client waits again, as a caller
    would, when there is no result yet or reading it failed; a task's own error is final."""
    last = "never read"
    while True:
        try:
            client.result(task, task_id, timeout=5)
            return "SUCCESS"
        except ServerTimeout as exc:
            last = f"ServerTimeout: {exc}"
        except AthenaError as exc:
            # The transport's plain AthenaError is a failed read (Redis away); the task's own are subclasses.
            if type(exc) is not AthenaError:
                return f"{exc.__class__.__name__}: {exc}"
            last = f"AthenaError: {exc}"
        if time.monotonic() >= deadline:
            return last


@pytest.fixture(scope="module")
def day(restartable):
    stack, server, client, _ = restartable
    run = send_stream(client, server)
    # One deadline for all: a lost task costs the wait once, not once per task.
    deadline = time.monotonic() + 90
    outcomes = {task_id: outcome(client, task, task_id, deadline) for task, task_id in run.sent}
    lost = {task_id: why for task_id, why in outcomes.items() if why != "SUCCESS"}
    print(f"\nsent {len(run.sent)}, not sent {len(run.send_errors)}, succeeded {len(run.sent) - len(lost)}, "
          f"lost {len(lost)}, Redis away {run.gap_s:.2f} s, slowest send {run.slowest_send_s:.2f} s", flush=True)
    return run, lost, stack


def test_sending_while_redis_is_away_waits_for_it_instead_of_failing(day):
    run, _, stack = day
    assert run.send_errors == [], "\n".join(run.send_errors) + stack.tails()


def test_every_embed_sent_across_the_restart_succeeds(day):
    run, lost, stack = day
    assert len(run.sent) + len(run.send_errors) == TASKS + 1
    assert lost == {}, f"{len(lost)} of {len(run.sent)} lost: {lost}\n{stack.tails()}"


def test_the_worker_still_consumes_after_the_restart(day, restartable):
    _, _, client, _ = restartable
    started = time.monotonic()
    assert client.embed("a fresh memory after the restart").dimension == 384
    assert time.monotonic() - started < 10


def test_a_result_written_before_the_restart_is_read_after_it(day, restartable):
    run, _, _ = day
    _, _, client, _ = restartable
    assert client.result(TaskName.EMBED, run.kept_id, timeout=5, keep=True).embedding == run.kept_before
