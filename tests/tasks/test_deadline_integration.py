"""A task whose deadline passes while it waits in the queue is dropped by the
worker that receives it: typed `Expired` for its caller, counted in metrics, and
never sent to the model server. On each pool the project runs (threads for
interactive embeds, prefork for reasoning)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from athena_client.contract.errors import Expired
from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender
from athena_client.shared_redis.metrics import MetricsReader
from tests.harness import recorded

LANES = {
    "embeddings": (TaskName.EMBED, EmbedRequest(text="a memory nobody waits for any more"), "LLAMACPP_EMBEDDINGS_URL"),
    "reasoning": (TaskName.REASON, ReasonRequest(prompt="A question nobody waits for any more?", max_tokens=8), "LLAMACPP_REASONING_URL"),
}


def prompt_tokens_served(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r"^llamacpp:prompt_tokens_total (\S+)", text, re.MULTILINE).group(1))


@pytest.mark.parametrize("queue", sorted(LANES))
def test_a_task_past_its_deadline_when_a_worker_takes_it_is_expired_and_never_reaches_the_server(stack, queue):
    task, request, url_setting = LANES[queue]
    server = stack.env[url_setting]
    env = stack.isolated_env()
    client = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
    try:
        # No worker serves this broker yet: the task waits past its deadline.
        late = client.submit(task, request, deadline=1)
        time.sleep(1.5)
        served_before = prompt_tokens_served(server)
        worker = stack.worker(queue, "deadline", env)
        stack.wait_for_workers(client, {f"{queue}@deadline"})
        with pytest.raises(Expired, match="not started before its deadline"):
            client.result(task, late, timeout=60)
        assert prompt_tokens_served(server) == served_before
        # The same call with time to spare runs, on the same worker and server.
        assert client.call(task, request, timeout=120).timing.server.prompt_tokens > 0
        assert prompt_tokens_served(server) > served_before
        stats = recorded(MetricsReader.from_url(env["ATHENA_METRICS_URL"]), task.value, lambda stats: stats.count >= 2)
        assert (stats.count, stats.expired, stats.failures, stats.success) == (2, 1, 1, 1)
        worker.stop()
    finally:
        client.close()
