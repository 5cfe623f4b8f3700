"""Every malformed payload, sent to every task, is refused as InvalidInput: never a raw exception."""

from __future__ import annotations

import pytest

from athena_client.errors import InputTooLong, InvalidInput
from athena_inference.config.celery import app
from tests.malformed import malformed_payloads

CASES = malformed_payloads()


def test_the_cases_cover_every_task_and_are_many():
    assert len({task for task, _, _, _ in CASES}) == 14 and len(CASES) >= 400


@pytest.mark.parametrize("task, args, kwargs, what", CASES, ids=[f"{t.value}: {w}" for t, _, _, w in CASES])
def test_a_malformed_payload_is_invalid_input(metrics, task, args, kwargs, what):
    with pytest.raises((InvalidInput, InputTooLong)):
        app.tasks[task.value](*args, **kwargs)
