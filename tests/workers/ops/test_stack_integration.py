"""`athena-inference up --check`: the README's first command, on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.processes import redis_data_dir, redis_password, redis_password_file
from tests.harness import CLI, all_gone, bulk_copies_env, descendants, local_stack_env, redis_port


def test_up_brings_the_stack_up_and_shows_a_job_through_every_queue(provisioned):
    # Two bulk copies, as the default gives a 2-CPU machine: the demo's re-embedding runs through both.
    env = local_stack_env(**bulk_copies_env(2))
    try:
        done = subprocess.run([*CLI, "up", "--check"], env=env, capture_output=True, text=True, timeout=600)
    finally:
        forget_redis_data(env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "starting: redis, embeddings-server, reasoning-server, embeddings-bulk-server" in out
    assert "embeddings-bulk-server.1" in out and "embeddings-bulk-server.2" in out
    for queue in ("embeddings", "reasoning", "compression", "consolidation"):
        assert f"{queue}-worker" in out
    assert "athena.embed on 'embeddings': 384-d vector" in out
    assert "athena.embed_batch on 'embeddings': 2 vectors" in out
    assert "athena.reason on 'reasoning':" in out
    assert "athena.compress_prompt on 'compression':" in out and "kept, perplexity" in out
    assert "athena.consolidate: 3 events ->" in out and "reasoning on reasoning" in out
    assert "tok/s" in out and "queue wait" in out
    assert "stack is up" in out


def start_up(env: dict[str, str]) -> subprocess.Popen:
    # Its own process group, like a shell's foreground job, so SIGINT reaches the group as Ctrl-C does.
    return subprocess.Popen([*CLI, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def read_until_up(up: subprocess.Popen) -> list[str]:
    """What `up` printed, up to the line that ends its report."""
    lines = []
    for line in up.stdout:
        lines.append(line)
        if "health: athena-inference health" in line:
            return lines
    raise AssertionError(f"up exited with {up.wait()} before the stack was up:\n{''.join(lines[-40:])}")


def forget_redis_data(env: dict[str, str]) -> None:
    # Each test's Redis keeps its append-only file under the cache, in a folder named by its (free) port.
    shutil.rmtree(redis_data_dir(load_settings(result_backend=env["ATHENA_RESULT_BACKEND"])), ignore_errors=True)


def send_ctrl_c(up: subprocess.Popen) -> None:
    # To the whole foreground group, as a terminal's Ctrl-C does.
    os.killpg(up.pid, signal.SIGINT)


def send_sigterm(up: subprocess.Popen) -> None:
    # To `up` alone, as systemd or a container runtime sends it to the process it started.
    up.send_signal(signal.SIGTERM)


@pytest.mark.parametrize(("stop", "bulk_copies"), [(send_ctrl_c, 1), (send_sigterm, 2)], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_to_up_stops_every_process_it_started(provisioned, stop, bulk_copies):
    env = local_stack_env(**bulk_copies_env(bulk_copies))
    up = start_up(env)
    try:
        read_until_up(up)
        started = descendants(up.pid)
        assert len(started) >= 9  # honcho, redis, the servers, six workers, flower, the exporter
        servers = {pid for pid in started if "llama-server" in Path(f"/proc/{pid}/cmdline").read_text()}
        assert len(servers) == 2 + bulk_copies  # embeddings, reasoning and each bulk copy
        stop(up)
        up.stdout.read()
        assert up.wait(timeout=60) == 0
        assert all_gone(started, 30) == []
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        forget_redis_data(env)


@pytest.fixture(scope="module")
def running_up(provisioned):
    """One `up` for the tests that only look at it; its output keeps being read so it never blocks."""
    env = local_stack_env()
    up = start_up(env)
    try:
        printed = read_until_up(up)
        drain = threading.Thread(target=lambda: [printed.append(line) for line in up.stdout], daemon=True)
        drain.start()
        yield up, "".join(printed), env
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        forget_redis_data(env)


def test_the_embedded_redis_password_is_on_no_command_line(running_up):
    password = redis_password(load_settings())
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert f":{redis_port(running_up[2])}" in listing  # the stack's Redis is among them
    assert password not in listing


def test_up_says_how_a_client_connects_without_printing_the_password(running_up):
    _, printed, env = running_up
    password = redis_password(load_settings())
    assert f"ATHENA_BROKER_URL=redis://:***@127.0.0.1:{redis_port(env)}/0" in printed
    assert f"its password is in {redis_password_file(load_settings())}" in printed
    assert password not in printed
