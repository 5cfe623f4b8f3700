"""TaskTransport.result: a result is read once and then deleted from Redis, unless the caller keeps it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from athena_client import transport as transport_module
from athena_client.contract.errors import AthenaError, Expired, InvalidInput, ServerTimeout
from athena_client.contract.routes import TaskName
from athena_client.result_waiter import WaitTimedOut
from athena_client.transport import TaskTransport

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc).isoformat()
EMBEDDING = {
    "embedding": [0.1, 0.2],
    "dimension": 2,
    "model": "m",
    "timing": {"task": "athena.embed", "queue": "embeddings", "model": "m", "started_at": NOW, "finished_at": NOW, "run_ms": 1.0},
}


class StoredResult:
    """The result waiter's side: the final meta of every awaited task, from one outcome."""

    def __init__(self, outcome) -> None:
        self.outcome = outcome

    def task_id(self) -> str:
        return "athena-test-1"

    def expect(self, task_id: str, *, not_sent_yet: bool = False) -> str:
        return task_id

    def wait(self, ticket: str, timeout: float) -> dict:
        if isinstance(self.outcome, WaitTimedOut):
            raise self.outcome
        if isinstance(self.outcome, BaseException):
            return {"status": "FAILURE", "result": self.outcome}
        return {"status": "SUCCESS", "result": self.outcome}

    def release(self, ticket: str) -> None:
        pass

    def close(self) -> None:
        pass


class StubBackend:
    """The result backend's side the transport deletes through: its Redis client and its cache."""

    def __init__(self) -> None:
        self.client = self
        self.deleted: list[str] = []

    @staticmethod
    def get_key_for_task(task_id: str) -> str:
        return f"celery-task-meta-{task_id}"

    def delete(self, *keys: str) -> None:
        self.deleted += keys


class StubApp:
    def __init__(self) -> None:
        self.backend = StubBackend()

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
    app = StubApp()
    transport = TaskTransport(app, timeout=1.0, waiter=StoredResult(outcome))
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
    transport, stored = transport_holding(WaitTimedOut())
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
    app = StubApp()
    transport = TaskTransport(app, timeout=1.0, waiter=StoredResult(EMBEDDING))
    for i in range(500):
        transport.result(TaskName.EMBED, f"t{i}")
    transport.close()
    assert sorted(app.backend.deleted) == sorted(f"celery-task-meta-t{i}" for i in range(500))


def test_an_error_of_no_athena_class_is_named_in_an_athena_error_and_kept():
    transport, stored = transport_holding(KeyError("vectors"))
    with pytest.raises(AthenaError, match="athena.embed t1 failed: KeyError"):
        transport.result(TaskName.EMBED, "t1")
    assert not stored.forgotten


def test_threads_that_wait_at_once_share_one_result_waiter(monkeypatch):
    made = []

    def slow_to_make(cls, backend):
        made.append(1)
        time.sleep(0.05)  # connecting takes a while: the window in which a second thread could make another
        return StoredResult(EMBEDDING)

    monkeypatch.setattr(transport_module.ResultWaiter, "for_backend", classmethod(slow_to_make))
    transport = TaskTransport(StubApp(), timeout=1.0)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda i: transport.result(TaskName.EMBED, f"t{i}"), range(200)))
    transport.close()
    assert made == [1]


# --- deadlines: when a worker stops starting a task ---


class SendingApp(StubApp):
    """Records what each send_task was given."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict] = []

    def send_task(self, name, **options):
        self.sent.append({"name": name, **options})
        return type("Sent", (), {"id": options.get("task_id") or "t1"})()


def sent_expiry(deadline=transport_module.KIND_DEFAULT, task=TaskName.EMBED) -> datetime | None:
    app = SendingApp()
    TaskTransport(app, timeout=1.0, waiter=StoredResult(EMBEDDING)).submit(task, None, deadline=deadline)
    return app.sent[0]["expires"]


def seconds_left(at: datetime) -> float:
    return (at - datetime.now(timezone.utc)).total_seconds()


def test_a_task_sent_without_a_deadline_gets_its_kinds_own():
    assert 29 < seconds_left(sent_expiry()) <= 30
    assert 899 < seconds_left(sent_expiry(task=TaskName.REASON)) <= 900
    # A re-embedding job may wait behind another for hours: no deadline.
    assert sent_expiry(task=TaskName.REEMBED) is None


def test_a_deadline_in_seconds_or_as_a_moment_is_what_the_worker_is_given():
    assert 4 < seconds_left(sent_expiry(5)) <= 5
    moment = datetime(2099, 1, 1, tzinfo=timezone.utc)
    assert sent_expiry(moment) == moment
    assert sent_expiry(None) is None


@pytest.mark.parametrize("deadline", [0, -1.5, float("nan"), "soon", True, datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2099, 1, 1)])
def test_a_deadline_that_has_passed_or_is_no_deadline_is_refused_and_nothing_is_sent(deadline):
    app = SendingApp()
    with pytest.raises(InvalidInput, match="nothing was sent"):
        TaskTransport(app, timeout=1.0, waiter=StoredResult(EMBEDDING)).submit(TaskName.EMBED, None, deadline=deadline)
    assert app.sent == []


def test_a_call_is_not_started_after_its_wait_or_its_kinds_deadline_whichever_comes_first():
    app = SendingApp()
    transport = TaskTransport(app, timeout=1.0, waiter=StoredResult(EMBEDDING))
    transport.call(TaskName.EMBED, None, timeout=5)
    transport.call(TaskName.EMBED, None, timeout=600)
    transport.call(TaskName.EMBED, None, timeout=600, deadline=120)
    assert [round(seconds_left(sent["expires"])) for sent in app.sent] == [5, 30, 120]


class RevokedResult(StoredResult):
    def wait(self, ticket: str, timeout: float) -> dict:
        return {"status": "REVOKED", "result": self.outcome}


def test_a_task_dropped_at_its_deadline_is_read_as_expired_once():
    from celery.exceptions import TaskRevokedError

    app = StubApp()
    transport = TaskTransport(app, timeout=1.0, waiter=RevokedResult(TaskRevokedError("expired")))
    with pytest.raises(Expired, match="not started before its deadline"):
        transport.result(TaskName.EMBED, "t1")
    transport.close()
    assert app.backend.deleted == ["celery-task-meta-t1"]
