"""Job records in Redis: counts and cursor move together, and cancel."""

from __future__ import annotations

import json

import fakeredis
import pytest

from athena_client.errors import JobError, JobNotFound
from athena_client.job_store import JobStore, state_json
from athena_client.jobs import ItemError, JobStatus, PostgresSource, ReembedRequest


@pytest.fixture
def jobs():
    return JobStore(fakeredis.FakeRedis())


def request() -> ReembedRequest:
    return ReembedRequest(source=PostgresSource(dsn="postgresql://athena@db/athena"))


def test_a_new_job_is_queued_with_nothing_counted(jobs):
    state = jobs.create(request())
    assert state.status is JobStatus.QUEUED
    assert (state.cursor, state.counts.done, state.progress) == (-1, 0, 0.0)
    assert jobs.job_ids() == [state.job_id]


def test_a_job_id_is_never_reused(jobs):
    jobs.create(request(), job_id="j1")
    with pytest.raises(JobError, match="already exists"):
        jobs.create(request(), job_id="j1")


def test_an_unknown_job_is_named(jobs):
    with pytest.raises(JobNotFound, match="no re-embedding job 'nope'"):
        jobs.get("nope")


def test_checkpoints_add_up_and_keep_errors_with_their_ids(jobs):
    job = jobs.create(request())
    jobs.start(job.job_id, runner="r", model="m", dimension=3, total=10)
    jobs.checkpoint(job.job_id, cursor=4, completed=3, skipped=1, failed=[ItemError(id=2, error="InvalidInput", message="empty")])
    jobs.checkpoint(job.job_id, cursor=9, completed=5)
    state = jobs.get(job.job_id)
    assert state.counts.model_dump() == {"total": 10, "completed": 8, "failed": 1, "skipped": 1, "chunked": 0, "truncated": 0}
    assert (state.cursor, state.progress) == (9, 1.0)
    assert jobs.errors(job.job_id) == [ItemError(id=2, error="InvalidInput", message="empty")]


def test_cancelling_a_queued_job_ends_it_and_a_running_one_is_flagged(jobs):
    queued = jobs.create(request())
    assert jobs.request_cancel(queued.job_id).status is JobStatus.CANCELLED
    running = jobs.create(request())
    jobs.start(running.job_id, runner="r", model="m", dimension=3, total=1)
    state = jobs.request_cancel(running.job_id)
    assert state.status is JobStatus.RUNNING and state.cancel_requested


def test_printed_state_hides_the_database_password(jobs):
    state = jobs.create(request())
    printed = state_json(state)
    assert "secret" not in printed
    assert json.loads(printed)["request"]["source"]["dsn"] == "<hidden>"
