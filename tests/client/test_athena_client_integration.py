"""The Athena client against real workers: sync, asyncio, health, failures, results read once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from athena_client import AthenaClient
from athena_client.contract.errors import InvalidInput
from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import Queue, TaskName

ROOT = Path(__file__).resolve().parents[2]

ATHENA_PROGRAM = r"""
import asyncio, json, sys
from athena_client import AsyncAthenaClient, AthenaClient
from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName

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
    with stack.side_lane(Queue.REASONING, "serverless", LLAMACPP_REASONING_URL="http://127.0.0.1:9") as side:
        report = side.client.health()
        assert report.queues["reasoning"].workers and report.queues["reasoning"].server_ready is False
        assert "unreachable" in report.queues["reasoning"].detail
        assert side.client.check_health()["reasoning"] is False


def test_bad_arguments_and_task_failures_raise_the_error_family(sender, stack):
    with AthenaClient(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]) as client:
        with pytest.raises(InvalidInput, match="text"):
            client.embed("")
        with pytest.raises(InvalidInput, match="temperature"):
            client.reason("hi", temperature=9)
        with pytest.raises(InvalidInput, match="event_type"):
            client.consolidate([{"id": "x", "timestamp": "2026-11-01T00:00:00Z", "content": "c"}])


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
