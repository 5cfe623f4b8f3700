"""`athena-inference health`: its exit code is what a container healthcheck reads."""

from __future__ import annotations

import json
import subprocess

from tests.harness import CLI, free_port


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "health", *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_healthy_stack_exits_zero_and_names_each_queue_and_model(sender, stack):
    done = health(stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    for queue in ("embeddings", "reasoning", "compression", "consolidation", "embeddings_bulk", "jobs"):
        assert f"{queue} " in done.stdout
    # An embedding lane names the profile its probe showed the server to fit.
    assert "(all-MiniLM-L6-v2, profile all-MiniLM-L6-v2)" in done.stdout and "(SmolLM2-135M-Instruct)" in done.stdout
    assert done.stdout.strip().endswith("healthy")


def test_json_report_for_one_queue(sender, stack):
    done = health(stack.env, "--queue", "embeddings", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["healthy"] is True
    assert report["queues"]["embeddings"]["model"] == "all-MiniLM-L6-v2"
    assert report["queues"]["embeddings"]["profile"] == "all-MiniLM-L6-v2"


def test_a_queue_with_no_worker_is_unhealthy(stack):
    env = dict(stack.env, **stack.isolated_env())
    done = health(env, "--queue", "reasoning", "--timeout", "2")
    assert done.returncode == 1
    assert "NO WORKERS" in done.stdout and "UNHEALTHY" in done.stdout


def test_an_unreachable_broker_is_unhealthy_and_says_so(stack):
    env = dict(stack.env, ATHENA_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = health(env, "--timeout", "2")
    assert done.returncode == 1
    assert "broker" in done.stdout and "Error" in done.stdout
