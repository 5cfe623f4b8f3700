"""TaskTransport.result: a result is read once and then deleted from Redis, unless the caller keeps it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from pydantic import ValidationError

from athena_client.errors import InvalidInput, ServerTimeout
from athena_client.routes import TaskName
from athena_client.transport import TaskTransport

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc).isoformat()
EMBEDDING = {
    "embedding": [0.1, 0.2],
    "dimension": 2,
    "model": "m",
    "timing": {"task": "athena.embed", "queue": "embeddings", "model": "m", "started_at": NOW, "finished_at": NOW, "run_ms": 1.0},
}


class StoredResult:
    """What the stub backend holds for one task id: an outcome, or nothing yet."""

    def __init__(self, task_id: str, outcome) -> None:
        self.id = task_id
        self.outcome = outcome

    def get(self, **_):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class StubBackend:
    """The result backend's side the transport deletes through: its Redis client and its cache."""

    def __init__(self) -> None:
        self._cache: dict = {}
        self.client = self
        self.deleted: list[str] = []

    @staticmethod
    def get_key_for_task(task_id: str) -> str:
        return f"celery-task-meta-{task_id}"

    def delete(self, *keys: str) -> None:
        self.deleted += keys


class StubApp:
    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.backend = StubBackend()

    def AsyncResult(self, task_id: str) -> StoredResult:  # noqa: N802 - Celery's name
        return StoredResult(task_id, self.outcome)

    def close(self) -> None:
        pass


class Held:
    def __init__(self, app: StubApp, transport: TaskTransport) -> None:
        self.app, self.transport = app, transport

    @property
    def forgotten(self) -> bool:
        # Deletes happen off the caller's path; closing the transport waits for them.
        self.transport.close()
        return self.app.backend.deleted == ["celery-task-meta-t1"]


def transport_holding(outcome) -> tuple[TaskTransport, Held]:
    app = StubApp(outcome)
    transport = TaskTransport(app, timeout=1.0)
    return transport, Held(app, transport)


def test_a_result_once_read_is_deleted():
    transport, stored = transport_holding(EMBEDDING)
    assert transport.result(TaskName.EMBED, "t1").dimension == 2
    assert stored.forgotten


def test_a_result_read_with_keep_stays():
    transport, stored = transport_holding(EMBEDDING)
    transport.result(TaskName.EMBED, "t1", keep=True)
    assert not stored.forgotten


def test_a_result_not_there_yet_is_left_for_a_later_read():
    transport, stored = transport_holding(CeleryTimeout())
    with pytest.raises(ServerTimeout):
        transport.result(TaskName.EMBED, "t1")
    assert not stored.forgotten


def test_a_tasks_own_error_is_read_once_too():
    transport, stored = transport_holding(InvalidInput("text is empty"))
    with pytest.raises(InvalidInput):
        transport.result(TaskName.EMBED, "t1")
    assert stored.forgotten


def test_a_result_that_does_not_fit_its_type_is_kept_for_a_look():
    transport, stored = transport_holding({"not": "an embedding"})
    with pytest.raises(ValidationError):
        transport.result(TaskName.EMBED, "t1")
    assert not stored.forgotten


def test_many_read_results_are_deleted_together_and_all_of_them():
    app = StubApp(EMBEDDING)
    transport = TaskTransport(app, timeout=1.0)
    for i in range(500):
        transport.result(TaskName.EMBED, f"t{i}")
    transport.close()
    assert sorted(app.backend.deleted) == sorted(f"celery-task-meta-t{i}" for i in range(500))
