"""Interactive reasoning first, against real workers and a one-slot llama-server.

Consolidation's reasoning stage has a queue and a worker of its own
(`reasoning_background`) in front of the same server: an interactive `reason`
waits at most for the background generation in progress, never for the
backlog behind it. A reasoning worker busy generating still answers a health
check at once, since its main process answers it.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from celery import states

from athena_client.contract.errors import Cancelled
from athena_client.contract.consolidation import ConsolidateOptions, ConsolidateRequest, EpisodicEvent
from athena_client.contract.payloads import ReasonRequest
from athena_client.contract.routes import Queue, TaskName
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS
from tests.harness import endless_generation, wait_for

BACKLOG = 3


@pytest.fixture(scope="module")
def lane(stack):
    """A reasoning server of its own (one slot), with the interactive, background and consolidation workers in front of it."""
    with stack.side_lane(Queue.REASONING, "first", own_server=True, ATHENA_REASONING_SLOTS="1") as side:
        others = [stack.worker(queue, "first", side.env) for queue in ("reasoning_background", "consolidation")]
        stack.wait_for_workers(side.client, {"reasoning_background@first", "consolidation@first"})
        side.url = side.env["LLAMACPP_REASONING_URL"]
        yield side
        for worker in others:
            worker.stop()


def cluster(n: int) -> ConsolidateRequest:
    """A short consolidation (one pattern from three events: seconds of generation on the small model)."""
    start = datetime(2026, 11, 10, 9, 0, tzinfo=timezone.utc)
    events = [
        EpisodicEvent(id=f"c{n}-{i}", timestamp=start + timedelta(minutes=i), event_type=e.event_type, content=e.content)
        for i, e in enumerate(INCIDENT_EVENTS[:3])
    ]
    return ConsolidateRequest(events=events, options=ConsolidateOptions(max_patterns=1, temperature=0.0))


def generating(url: str) -> bool:
    return httpx.get(f"{url}/slots", timeout=5).json()[0]["is_processing"]


def test_an_interactive_generation_waits_for_the_consolidation_in_progress_not_the_backlog(lane):
    client = lane.client
    backlog = [client.submit(TaskName.CONSOLIDATE, cluster(n)) for n in range(BACKLOG)]
    wait_for(lambda: generating(lane.url), "the first consolidation generating", 60)
    answer = client.call(TaskName.REASON, ReasonRequest(prompt="Say hello.", max_tokens=8), timeout=300)
    unfinished = [t for t in backlog if client.app.backend.get_task_meta(t)["status"] not in states.READY_STATES]
    assert answer.text
    # Behind one FIFO it would have come after all three; here, after the one in progress at most.
    assert len(unfinished) >= BACKLOG - 1, f"{BACKLOG - len(unfinished)} consolidations finished before the interactive answer"
    # The rest of the backlog is not this test's business: cancelled, wherever each is.
    for task_id in unfinished:
        client.cancel(task_id)
    done = [t for t in backlog if t not in unfinished]
    for task_id in done:
        assert client.result(TaskName.CONSOLIDATE, task_id, timeout=600).stages[-1].queue == "reasoning_background"
    for task_id in unfinished:
        with pytest.raises(Cancelled):
            client.result(TaskName.CONSOLIDATE, task_id, timeout=600)


def test_a_reasoning_worker_busy_generating_still_reports_its_server_healthy(lane):
    client = lane.client
    task_id = client.submit(TaskName.REASON, endless_generation("Write about a lighthouse."))
    wait_for(lambda: generating(lane.url), "the generation running", 60)
    started = time.monotonic()
    report = client.health(timeout=5)
    assert report.queues["reasoning"].server_ready is True and report.queues["reasoning"].detail == "ok"
    assert report.queues["reasoning_background"].workers
    assert time.monotonic() - started < 5, "health waited out its timeout"
    assert client.cancel(task_id).state == "running"
