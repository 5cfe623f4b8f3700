"""Every malformed payload, sent to every task, is refused as InvalidInput: never a raw exception,
never a worker lost."""

from __future__ import annotations

import random

import pytest

from athena_client.contract.errors import InputTooLong, InvalidInput
from athena_client.contract.routes import TaskName, queue_for
from athena_inference.config.celery import app
from athena_inference.workers.ops.sample_payloads import malformed_payloads
from tests.harness import ALL_QUEUES, alive, answering

CASES = malformed_payloads()


def test_the_cases_cover_every_task_and_are_many():
    assert {task for task, _, _, _ in CASES} == set(TaskName) and len(CASES) >= 400


@pytest.mark.parametrize("task, args, kwargs, what", CASES, ids=[f"{t.value}: {w}" for t, _, _, w in CASES])
def test_a_malformed_payload_is_invalid_input(metrics, task, args, kwargs, what):
    with pytest.raises((InvalidInput, InputTooLong)):
        app.tasks[task.value](*args, **kwargs)


def test_malformed_payloads_through_the_broker_are_each_refused_typed_and_every_worker_lives(sender, stack):
    workers = {proc.name: proc.popen.pid for proc in stack.procs if proc.name.endswith("-worker-main")}
    assert len(workers) == len(ALL_QUEUES)
    # Up to twelve of each task's, drawn the same on every run.
    rng, by_task = random.Random(11), {}
    for case in CASES:
        by_task.setdefault(case[0], []).append(case)
    drawn = [case for cases in by_task.values() for case in rng.sample(cases, min(12, len(cases)))]
    assert set(by_task) == set(TaskName) and len(drawn) >= 120
    pending = [
        (what, sender.app.send_task(task.value, args=args, kwargs=kwargs, queue=queue_for(task.value).value))
        for task, args, kwargs, what in drawn
    ]
    outcomes = []
    for what, result in pending:
        try:
            result.get(timeout=120)
            outcomes.append(f"{what}: ran")
        except (InvalidInput, InputTooLong):
            pass
        except Exception as exc:  # noqa: BLE001 - every other outcome is the failure this test looks for
            outcomes.append(f"{what}: {exc.__class__.__name__}: {exc}")
    assert outcomes == []
    assert {name for name, pid in workers.items() if not alive(pid)} == set()
    assert answering(sender, timeout=2.0) >= {f"{queue}@main" for queue in ALL_QUEUES}
