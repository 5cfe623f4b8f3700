"""`athena-inference up`, on free ports: `up --check` as the README gives it, and SIGTERM to `up`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from athena_client.contract.routes import ROUTES, SERVER_HEALTH
from athena_inference.config.registry import LANES, server_lanes
from athena_inference.workers.ops.demo import DEMOED
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.processes import redis_data_dir, redis_password, redis_password_file
from tests.harness import CLI, all_gone, bulk_copies_env, descendants, local_stack_env, redis_port


def start_up(env: dict[str, str], *options: str) -> subprocess.Popen:
    # A session of its own, like a shell's foreground job.
    return subprocess.Popen([*CLI, "up", *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def read_until(up: subprocess.Popen, text: str) -> list[str]:
    """What `up` printed, up to the line holding `text`."""
    lines = []
    for line in up.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"up exited with {up.wait()} before printing {text!r}:\n{''.join(lines[-40:])}")


def kill_what_is_left(up: subprocess.Popen) -> None:
    """After a failed test: `up` and everything below it, honcho's own session included."""
    for pid in [*descendants(up.pid), up.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    up.wait(timeout=30)


def forget_redis_data(env: dict[str, str]) -> None:
    # Each test's Redis keeps its append-only file under the cache, in a folder named by its (free) port.
    shutil.rmtree(redis_data_dir(load_settings(result_backend=env["ATHENA_RESULT_BACKEND"])), ignore_errors=True)


def llama_servers(pids: set[int]) -> set[int]:
    return {pid for pid in pids if "llama-server" in Path(f"/proc/{pid}/cmdline").read_text()}


BULK_COPIES = 2
# Every lane's server once, and the bulk lane's as many times as it has copies.
LLAMA_SERVERS = len(server_lanes()) - 1 + BULK_COPIES

@dataclass
class CheckedUp:
    """What one `up --check` printed, what ran while its demo did, and what was left once it exited."""

    env: dict[str, str]
    printed: str
    started: set[int]
    servers: set[int]
    listing: str
    exit_code: int
    left: list[int]


@pytest.fixture(scope="module")
def checked_up(provisioned) -> CheckedUp:
    # Two bulk copies, as the default gives a 2-CPU machine: the demo's re-embedding runs through both.
    env = local_stack_env(**bulk_copies_env(BULK_COPIES))
    up = start_up(env, "--check")
    try:
        # The stack is up once the demo's first job is done; the rest of the demo takes seconds more.
        printed = read_until(up, "athena.embed on 'embeddings'")
        started = descendants(up.pid)
        servers = llama_servers(started)
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        printed += up.stdout.readlines()
        exit_code = up.wait(timeout=600)
        return CheckedUp(env, "".join(printed), started, servers, listing, exit_code, all_gone(started, 30))
    finally:
        kill_what_is_left(up)
        forget_redis_data(env)


def test_up_check_brings_the_stack_up_shows_a_job_through_every_queue_and_exits_zero(checked_up):
    out = checked_up.printed
    assert checked_up.exit_code == 0, out[-4000:]
    assert "starting: redis, embeddings-server, reasoning-server, embeddings-bulk-server" in out
    assert "embeddings-bulk-server.1" in out and "embeddings-bulk-server.2" in out
    for queue in ("embeddings", "reasoning", "compression", "consolidation"):
        assert f"{queue}-worker" in out
    assert "athena.embed on 'embeddings': 384-d vector" in out
    assert "athena.embed_batch on 'embeddings': 2 vectors" in out
    assert "athena.reason on 'reasoning':" in out
    assert "athena.compress_prompt on 'compression':" in out and "kept, perplexity" in out
    assert "athena.consolidate: 3 events ->" in out and "reasoning on reasoning" in out
    # Every other lane's caller-facing tasks, with their request models' examples.
    for task, route in ROUTES.items():
        if route.queue not in DEMOED and route.result is not None and task not in SERVER_HEALTH.values():
            assert f"{task.value} on '{route.queue.value}': " in out, task
    assert "tok/s" in out and "queue wait" in out
    assert "stack is up" in out


def test_up_check_stops_every_process_it_started_once_the_demo_is_done(checked_up):
    assert len(checked_up.started) >= 3 + len(LANES) + LLAMA_SERVERS  # honcho, redis, the servers, a worker per lane, flower, the exporter
    assert len(checked_up.servers) == LLAMA_SERVERS
    assert checked_up.left == []


def test_the_embedded_redis_password_is_on_no_command_line(checked_up):
    password = redis_password(load_settings())
    assert f":{redis_port(checked_up.env)}" in checked_up.listing  # the stack's Redis is among them
    assert password not in checked_up.listing


def test_up_says_how_a_client_connects_without_printing_the_password(checked_up):
    password = redis_password(load_settings())
    assert f"ATHENA_BROKER_URL=redis://:***@127.0.0.1:{redis_port(checked_up.env)}/0" in checked_up.printed
    assert f"its password is in {redis_password_file(load_settings())}" in checked_up.printed
    assert password not in checked_up.printed


def test_sigterm_to_up_stops_every_process_it_started(provisioned):
    # To `up` alone, as systemd or a container runtime sends it to the process it started. SIGINT (a
    # terminal's Ctrl-C) is the same stop to `up` (tests/workers/ops/test_stack.py); this is the one real run.
    env = local_stack_env(**bulk_copies_env(BULK_COPIES))
    # No demo: what is stopped is the stack, once every worker and server answers (the demo is the test above).
    up = start_up(env, "--no-demo")
    try:
        printed = read_until(up, "health: athena-inference health")
        assert not any(line.startswith("athena.embed on") for line in printed)
        started = descendants(up.pid)
        assert len(started) >= 3 + len(LANES) + LLAMA_SERVERS  # honcho, redis, the servers, a worker per lane, flower, the exporter
        assert len(llama_servers(started)) == LLAMA_SERVERS
        up.send_signal(signal.SIGTERM)
        up.stdout.read()
        assert up.wait(timeout=60) == 0
        assert all_gone(started, 30) == []
    finally:
        kill_what_is_left(up)
        forget_redis_data(env)
