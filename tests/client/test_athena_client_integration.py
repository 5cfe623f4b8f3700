"""The Athena client against real workers: sync, asyncio, health, failures, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from athena_client import AthenaClient
from athena_client.consolidation import ConsolidateRequest
from athena_client.errors import AthenaError, InvalidInput, ServerTimeout
from athena_client.payloads import EmbedRequest
from athena_client.routes import TaskName
from tests.harness import wait_for
from tests.tasks.consolidation.test_consolidation_integration import EVENTS

ROOT = Path(__file__).resolve().parents[2]

ATHENA_PROGRAM = r"""
import asyncio, json, sys
from athena_client import AsyncAthenaClient, AthenaClient
from athena_client.routes import TaskName
from athena_client.payloads import EmbedRequest

broker, backend = sys.argv[1], sys.argv[2]
out = {}
with AthenaClient(broker, backend) as client:
    out["embed_dim"] = client.embed("sync memory").dimension
    out["batch"] = [r.dimension for r in client.embed_batch(["a", "b", "c"], batch_size=2)]
    searched = client.embed_batch(["what failed?"], purpose="query", dimensions=384)[0]
    out["searched"] = [searched.purpose, searched.profile, searched.space]
    reasoned = client.reason("Say hello.", max_tokens=8, temperature=0.0)
    out["reason_tokens"] = reasoned.tokens
    task_id = client.submit(TaskName.EMBED, EmbedRequest(text="fire and forget"))
    out["later_dim"] = client.result(TaskName.EMBED, task_id, timeout=60).dimension
    out["health"] = client.check_health()

async def main():
    async with AsyncAthenaClient(broker, backend) as client:
        first, second = await asyncio.gather(client.embed("async one"), client.embed("async two"))
        return [first.dimension, second.dimension]

out["async_dims"] = asyncio.run(main())
missing = []
for name in ("torch", "httpx", "transformers", "llmlingua", "pydantic_settings"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
out["absent"] = missing
print(json.dumps(out))
"""


def test_client_works_sync_and_from_asyncio_with_only_its_own_dependencies(sender, stack, client_only_python):
    done = subprocess.run(
        [client_only_python, "-c", ATHENA_PROGRAM, stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]],
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["embed_dim"] == 384 and out["batch"] == [384, 384, 384] and out["later_dim"] == 384
    assert out["searched"] == ["query", "all-MiniLM-L6-v2", "all-MiniLM-L6-v2 [all-MiniLM-L6-v2, 384-d]"]
    assert 0 < out["reason_tokens"] <= 8
    assert out["async_dims"] == [384, 384]
    assert out["health"] == {"embedding": True, "reasoning": True, "compression": True}
    assert set(out["absent"]) == {"torch", "httpx", "transformers", "llmlingua", "pydantic_settings"}


def test_the_command_in_a_client_only_install_names_the_extra_it_needs(client_only_python):
    command = Path(client_only_python).parent / "athena-inference"
    done = subprocess.run([str(command), "health"], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 2
    assert "pip install 'athena-inference[worker]'" in done.stderr and "Traceback" not in done.stderr


def test_health_reports_workers_servers_and_compression(sender, stack):
    with AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]) as client:
        report = client.health()
    assert report.queues["embeddings"].workers and report.queues["embeddings"].server_ready
    assert report.queues["reasoning"].server_ready and report.queues["reasoning"].detail == "ok"
    assert report.compression.ready and report.compression.method == "perplexity"


def test_health_says_not_ready_when_a_server_is_down(stack):
    redis_url = stack.env["ATHENA_BROKER_URL"].rsplit("/", 1)[0]
    env = {"ATHENA_BROKER_URL": f"{redis_url}/8", "ATHENA_RESULT_BACKEND": f"{redis_url}/9",
           "LLAMACPP_REASONING_URL": "http://127.0.0.1:9"}
    stack.worker("reasoning", "serverless", env)
    with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"]) as client:
        wait_for(lambda: client.health().queues["reasoning"].workers, "serverless worker", 60)
        report = client.health()
        assert report.queues["reasoning"].server_ready is False
        assert "unreachable" in report.queues["reasoning"].detail
        assert client.check_health()["reasoning"] is False


def test_bad_arguments_and_task_failures_raise_the_error_family(sender, stack):
    with AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]) as client:
        with pytest.raises(InvalidInput, match="text"):
            client.embed("")
        with pytest.raises(InvalidInput, match="temperature"):
            client.reason("hi", temperature=9)
        with pytest.raises(InvalidInput, match="event_type"):
            client.consolidate([{"id": "x", "timestamp": "2026-11-01T00:00:00Z", "content": "c"}])


def test_consolidation_survives_its_reasoning_worker_being_killed(stack):
    redis_url = stack.env["ATHENA_BROKER_URL"].rsplit("/", 1)[0]
    env = {"ATHENA_BROKER_URL": f"{redis_url}/10", "ATHENA_RESULT_BACKEND": f"{redis_url}/11"}
    stack.worker("consolidation", "kill", env)
    stack.worker("reasoning", "kill", env)
    with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"]) as client:
        wait_for(lambda: len(client.app.control.ping(timeout=1.0) or []) >= 2, "kill-test workers", 60)
        task_id = client.submit(TaskName.CONSOLIDATE, ConsolidateRequest(events=EVENTS, options={"temperature": 0.0}))

        def reasoning_child() -> int:
            active = client.app.control.inspect(timeout=1.0).active() or {}
            for worker, tasks in active.items():
                for task in tasks:
                    if worker.startswith("reasoning@") and task["name"] == TaskName.CONSOLIDATE_REASON.value:
                        return task["worker_pid"]
            return 0

        deadline, pid = time.monotonic() + 120, 0
        while not pid and time.monotonic() < deadline:
            pid = reasoning_child()
            time.sleep(0.2)
        assert pid, "the reasoning stage never started"
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        try:
            out = client.result(TaskName.CONSOLIDATE, task_id, timeout=300)
        except ServerTimeout:
            raise AssertionError("the job hung after its worker was killed") from None
        except AthenaError as exc:
            assert str(exc)  # failing clearly is allowed
        else:
            assert out.patterns
        assert time.monotonic() - started < 300


def stored_result(stack, task_id: str):
    return redis.Redis.from_url(stack.env["ATHENA_RESULT_BACKEND"]).get(f"celery-task-meta-{task_id}")


def test_a_result_once_read_is_gone_from_redis(sender, stack):
    with AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]) as client:
        task_id = client.submit(TaskName.EMBED, EmbedRequest(text="read once"))
        assert client.result(TaskName.EMBED, task_id, timeout=60).dimension == 384
    assert stored_result(stack, task_id) is None


def test_a_result_read_with_keep_can_be_read_again(sender, stack):
    with AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]) as client:
        task_id = client.submit(TaskName.EMBED, EmbedRequest(text="kept for a second reader"))
        first = client.result(TaskName.EMBED, task_id, timeout=60, keep=True)
        assert stored_result(stack, task_id) is not None
        assert client.result(TaskName.EMBED, task_id, timeout=5).embedding == first.embedding
    assert stored_result(stack, task_id) is None
