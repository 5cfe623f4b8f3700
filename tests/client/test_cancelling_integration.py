"""`cancel` against real workers and a real llama-server.

A running generation stops at the server: the worker closes its streamed
request, and llama-server's /slots shows the slot free again within 250 ms and
its decoded-token count still. A queued task never runs, whether Celery's
revoke reached a live worker or the worker started after the cancel. On the
pools the project runs: prefork (reasoning) and threads (embeddings), and a
generation on a threaded worker too. Bad ids are typed errors.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from athena_client.async_client import AsyncAthenaClient
from athena_client.compat import connection
from athena_client.compat.llm_client import LocalLLMClient
from athena_client.contract.errors import Cancelled, InvalidInput, UnknownTask
from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import Queue, TaskName
from athena_client.sender import TaskSender
from athena_client.shared_redis.metrics import MetricsReader
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops import processes
from tests.harness import endless_generation, recorded, wait_for

# The bound: from the cancel call to the slot seen free.
SLOT_FREE_WITHIN_S = 0.25


def slot(url: str) -> dict:
    [only] = httpx.get(f"{url}/slots", timeout=5).json()
    return only


def decoded(state: dict) -> int:
    return int(state["next_token"][0]["n_decoded"])


def tokens_predicted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r"^llamacpp:tokens_predicted_total (\S+)", text, re.MULTILINE).group(1))


def prompt_tokens_served(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r"^llamacpp:prompt_tokens_total (\S+)", text, re.MULTILINE).group(1))


def generating(url: str, at_least: int = 10) -> None:
    wait_for(lambda: slot(url)["is_processing"] and decoded(slot(url)) >= at_least, "the slot generating", 60)


def seconds_until_free(url: str, since: float) -> float:
    while slot(url)["is_processing"]:
        if time.monotonic() - since > 10:
            raise AssertionError(f"the slot still generates 10 s after the cancel: {slot(url)}")
        time.sleep(0.005)
    return time.monotonic() - since


@pytest.fixture(scope="module")
def reasoning(stack):
    """A reasoning lane of its own (worker and one-slot server), so its slot is this module's alone."""
    with stack.side_lane(Queue.REASONING, "cancel", own_server=True, ATHENA_REASONING_SLOTS="1") as side:
        side.url = side.env["LLAMACPP_REASONING_URL"]
        yield side


def cancel_running_generation(client: TaskSender, url: str) -> tuple[float, str]:
    task_id = client.submit(TaskName.REASON, endless_generation("Write about a lighthouse."))
    generating(url)
    started = time.monotonic()
    report = client.cancel(task_id)
    free_after = seconds_until_free(url, started)
    assert report.state == "running", report
    return free_after, task_id


def assert_stopped_at_the_server(url: str) -> None:
    still = slot(url)
    predicted = tokens_predicted(url)
    time.sleep(0.3)
    assert decoded(slot(url)) == decoded(still) and tokens_predicted(url) == predicted


def test_a_running_generation_cancelled_frees_its_slot_within_250_ms_and_stops_decoding(reasoning):
    client, url = reasoning.client, reasoning.url
    free_after, task_id = cancel_running_generation(client, url)
    assert free_after <= SLOT_FREE_WITHIN_S, f"the slot was free {free_after * 1000:.0f} ms after the cancel"
    assert_stopped_at_the_server(url)
    with pytest.raises(Cancelled, match="the server stopped generating"):
        client.result(TaskName.REASON, task_id, timeout=30)
    # The freed slot serves the next generation.
    assert client.call(TaskName.REASON, ReasonRequest(prompt="Say hello.", max_tokens=4), timeout=60).text
    recorded(MetricsReader.from_url(reasoning.env["ATHENA_METRICS_URL"]), TaskName.REASON.value,
             lambda stats: stats.cancelled >= 1 and stats.success >= 1)


def test_a_generation_queued_behind_a_running_one_is_cancelled_unrun(reasoning):
    client, url = reasoning.client, reasoning.url
    running = client.submit(TaskName.REASON, endless_generation("Write about a harbour."))
    generating(url)
    queued = client.submit(TaskName.REASON, ReasonRequest(prompt="A question asked and withdrawn?", max_tokens=8))
    assert client.cancel(queued).state == "queued"
    served = prompt_tokens_served(url)
    assert client.cancel(running).state == "running"
    for task_id in (running, queued):
        with pytest.raises(Cancelled):
            client.result(TaskName.REASON, task_id, timeout=30)
    # The withdrawn question never reached the server.
    time.sleep(0.5)
    assert prompt_tokens_served(url) == served


def test_a_task_cancelled_while_no_worker_was_up_does_not_run_when_one_starts(stack):
    """Celery's revoke reaches only live workers; the cancel kept in Redis reaches the one that starts later."""
    env = stack.isolated_env()
    client = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
    server = stack.env["LLAMACPP_EMBEDDINGS_URL"]
    try:
        task_id = client.submit(TaskName.EMBED, EmbedRequest(text="a memory withdrawn before anyone embedded it"), deadline=None)
        assert client.cancel(task_id).state == "queued"
        served = prompt_tokens_served(server)
        worker = stack.worker("embeddings", "cancel", env)
        stack.wait_for_workers(client, {"embeddings@cancel"})
        with pytest.raises(Cancelled, match="cancelled before it started"):
            client.result(TaskName.EMBED, task_id, timeout=60)
        assert prompt_tokens_served(server) == served
        stats = recorded(MetricsReader.from_url(env["ATHENA_METRICS_URL"]), TaskName.EMBED.value, lambda stats: stats.count >= 1)
        assert (stats.failures, stats.cancelled) == (1, 1)
        worker.stop()
    finally:
        client.close()


def test_cancel_says_a_finished_task_is_finished_and_refuses_ids_nobody_knows(sender):
    task_id = sender.submit(TaskName.EMBED, EmbedRequest(text="a memory embedded in time"))
    embedded = sender.result(TaskName.EMBED, task_id, timeout=60, keep=True)
    report = sender.cancel(task_id)
    assert report.state == "finished" and "result stands" in report.detail
    assert sender.result(TaskName.EMBED, task_id, timeout=5).embedding == embedded.embedding
    with pytest.raises(UnknownTask, match="no queue, worker or stored result knows task"):
        sender.cancel("0b9f7a52-0000-4000-8000-000000000000")
    for bad in ("", "   ", None, 42, "x" * 300):
        with pytest.raises(InvalidInput, match="a task id is the non-empty string"):
            sender.cancel(bad)


def test_the_async_client_cancels_a_running_generation(reasoning):
    url = reasoning.url

    async def scenario() -> str:
        async with AsyncAthenaClient(reasoning.env["ATHENA_BROKER_URL"], reasoning.env["ATHENA_RESULT_BACKEND"]) as client:
            task_id = await client.submit(TaskName.REASON, endless_generation("Write about a pier."))
            await asyncio.to_thread(generating, url)
            report = await client.cancel(task_id)
            with pytest.raises(Cancelled):
                await client.result(TaskName.REASON, task_id, timeout=30)
            return report.state

    assert asyncio.run(scenario()) == "running"
    assert not slot(url)["is_processing"]


def test_an_awaitable_athena_cancels_stops_its_generation_at_the_server(reasoning, monkeypatch):
    """Athena's own code, through the compatibility client: `asyncio` cancels the call, and the server stops too."""
    monkeypatch.setenv("ATHENA_BROKER_URL", reasoning.env["ATHENA_BROKER_URL"])
    monkeypatch.setenv("ATHENA_RESULT_BACKEND", reasoning.env["ATHENA_RESULT_BACKEND"])
    monkeypatch.setattr(connection, "_clients", {})
    url = reasoning.url

    async def scenario() -> float:
        llm = LocalLLMClient(timeout_seconds=60)
        call = asyncio.create_task(llm.reason("Write a very long story about a lighthouse keeper.", max_tokens=2048))
        await asyncio.to_thread(generating, url)
        call.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await call
        return started

    try:
        started = asyncio.run(scenario())
        # The cancel leaves through a client thread: a little slower than `cancel`'s own.
        assert seconds_until_free(url, started) < 2
    finally:
        for client in connection._clients.values():
            client.close()


def test_a_generation_on_a_threaded_worker_is_stopped_at_the_server_too(stack, reasoning):
    """The same lane, its worker on Celery's threads pool instead of prefork (last: it replaces the lane's worker)."""
    reasoning.worker.stop()
    argv = processes.worker_argv(Queue.REASONING, load_settings(), node_suffix="cancel-threads")
    argv[argv.index("-P") + 1] = "threads"
    worker = stack.start("reasoning-worker-cancel-threads", argv, reasoning.env)
    try:
        stack.wait_for_workers(reasoning.client, {"reasoning@cancel-threads"})
        free_after, task_id = cancel_running_generation(reasoning.client, reasoning.url)
        assert free_after <= SLOT_FREE_WITHIN_S, f"the slot was free {free_after * 1000:.0f} ms after the cancel"
        assert_stopped_at_the_server(reasoning.url)
        with pytest.raises(Cancelled):
            reasoning.client.result(TaskName.REASON, task_id, timeout=30)
    finally:
        worker.stop()
