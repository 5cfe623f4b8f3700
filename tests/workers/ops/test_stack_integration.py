"""`athena-inference up --check`: the README's first command, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.harness import CLI, local_stack_env


def test_up_brings_the_stack_up_and_shows_a_job_through_every_queue(provisioned):
    env = local_stack_env()
    done = subprocess.run([*CLI, "up", "--check"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "starting: redis, embeddings-server, reasoning-server" in out
    for queue in ("embeddings", "reasoning", "compression", "consolidation"):
        assert f"{queue}-worker" in out
    assert "athena.embed on 'embeddings': 384-d vector" in out
    assert "athena.embed_batch on 'embeddings': 2 vectors" in out
    assert "athena.reason on 'reasoning':" in out
    assert "athena.compress_prompt on 'compression':" in out and "kept, perplexity" in out
    assert "athena.consolidate: 3 events ->" in out and "reasoning on reasoning" in out
    assert "tok/s" in out and "queue wait" in out
    assert "stack is up" in out


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_ctrl_c_stops_every_process_up_started(provisioned):
    env = local_stack_env()
    # Its own process group, like a shell's foreground job, so SIGINT reaches the group as Ctrl-C does.
    up = subprocess.Popen([*CLI, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in up.stdout:
            if "stack is up" in line:
                break
        else:
            raise AssertionError(f"up exited with {up.wait()} before the stack was up")
        started = descendants(up.pid)
        assert len(started) >= 9  # honcho, redis, two servers, four workers, flower
        os.killpg(up.pid, signal.SIGINT)
        up.stdout.read()
        assert up.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(pid) for pid in started):
            time.sleep(0.5)
        assert not [pid for pid in started if alive(pid)]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
