"""AthenaClient's named methods over a recording transport: each hands the caller's deadline on, or the kind's default."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from athena_client.client import AthenaClient
from athena_client.contract.routes import TaskName
from athena_client.transport import KIND_DEFAULT


class Recording:
    """A transport that keeps the deadline of every task sent, and answers nothing."""

    timeout = 30.0

    def __init__(self) -> None:
        self.deadlines: dict[TaskName, object] = {}

    def call(self, task, request, timeout=None, *, deadline=KIND_DEFAULT):
        self.deadlines[task] = deadline
        return type("Answer", (), {"patterns": []})()

    def submit(self, task, request, *, queue=None, deadline=KIND_DEFAULT, task_id=None):
        self.deadlines[task] = deadline
        return "t1"

    def result(self, task, task_id, timeout=None, *, keep=False):
        raise LookupError("not asked for")

    def close(self) -> None:
        pass


@pytest.fixture
def client():
    client = AthenaClient("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1")
    client.transport = Recording()
    return client


CALLS = {
    TaskName.EMBED: lambda c, d: c.embed("a memory", deadline=d),
    TaskName.REASON: lambda c, d: c.reason("Why?", deadline=d),
    TaskName.COMPRESS_PROMPT: lambda c, d: c.compress_prompt("a long context", deadline=d),
    TaskName.CONSOLIDATE: lambda c, d: c.consolidate(
        [{"id": "e1", "timestamp": "2026-11-01T00:00:00Z", "event_type": "note", "content": "c"}], deadline=d, max_patterns=2
    ),
}


@pytest.mark.parametrize("task", list(CALLS), ids=lambda t: t.value)
def test_each_named_method_sends_the_deadline_it_was_given_or_the_kinds_own(client, task):
    at = datetime.now(timezone.utc) + timedelta(minutes=5)
    for deadline in (5.0, at, None):
        CALLS[task](client, deadline)
        assert client.transport.deadlines[task] == deadline
    CALLS[task](client, KIND_DEFAULT)
    assert client.transport.deadlines[task] is KIND_DEFAULT


def test_a_batch_sends_every_one_of_its_requests_under_the_callers_deadline(client):
    with pytest.raises(LookupError):
        client.embed_batch(["a", "b"], deadline=7.0)
    assert client.transport.deadlines[TaskName.EMBED_BATCH] == 7.0
