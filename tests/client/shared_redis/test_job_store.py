"""Job records in Redis: counts and cursor move together, and cancel."""

from __future__ import annotations

import json

import fakeredis
import pytest

from athena_client.contract.errors import ConfigurationError, JobError, JobNotFound
from athena_client.contract.jobs import ItemError, JobStatus, PostgresSource, ReembedRequest
from athena_client.shared_redis.job_store import DEFAULT_JOB_TTL_S, JobStore, job_ttl_from_env, lease_key, state_json


TTL = 3600


@pytest.fixture
def jobs():
    return JobStore(fakeredis.FakeRedis(), ttl_s=TTL)


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


# --- how long a job's record stays ---


def record_ttls(jobs: JobStore, job_id: str) -> tuple[int, int]:
    return jobs.redis.ttl(f"athena:job:{job_id}"), jobs.redis.ttl(f"athena:job:{job_id}:errors")


def failed_item(jobs: JobStore, job_id: str) -> None:
    jobs.start(job_id, runner="r", model="m", dimension=3, total=2)
    jobs.checkpoint(job_id, cursor=1, completed=1, failed=[ItemError(id=2, error="InvalidInput", message="empty")])


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_an_ended_jobs_record_and_errors_expire_after_the_job_ttl(jobs, status):
    job = jobs.create(request())
    failed_item(jobs, job.job_id)
    jobs.set_status(job.job_id, status)
    record, errors = record_ttls(jobs, job.job_id)
    assert TTL - 5 <= record <= TTL and TTL - 5 <= errors <= TTL


def test_a_running_jobs_record_does_not_expire(jobs):
    job = jobs.create(request())
    failed_item(jobs, job.job_id)
    jobs.set_status(job.job_id, JobStatus.FINISHING)
    assert record_ttls(jobs, job.job_id) == (-1, -1)


def test_resuming_an_ended_job_keeps_its_record_again(jobs):
    job = jobs.create(request())
    failed_item(jobs, job.job_id)
    jobs.set_status(job.job_id, JobStatus.FAILED, "lane down")
    jobs.clear_cancel(job.job_id)
    assert record_ttls(jobs, job.job_id) == (-1, -1)


def test_a_runner_starting_an_ended_job_again_keeps_its_record(jobs):
    job = jobs.create(request())
    failed_item(jobs, job.job_id)
    jobs.set_status(job.job_id, JobStatus.CANCELLED)
    jobs.start(job.job_id, runner="r2", model="m", dimension=3, total=2)
    assert record_ttls(jobs, job.job_id) == (-1, -1)


def test_a_lease_still_held_when_the_job_ends_keeps_its_own_shorter_ttl(jobs):
    job = jobs.create(request())
    jobs.redis.set(lease_key(job.job_id), "runner-1", px=30_000)
    jobs.set_status(job.job_id, JobStatus.COMPLETED)
    assert 0 < jobs.redis.pttl(lease_key(job.job_id)) <= 30_000


def test_a_lease_without_a_ttl_gets_the_jobs(jobs):
    job = jobs.create(request())
    jobs.redis.set(lease_key(job.job_id), "runner-1")
    jobs.set_status(job.job_id, JobStatus.COMPLETED)
    assert TTL - 5 <= jobs.redis.ttl(lease_key(job.job_id)) <= TTL


def test_the_job_list_skips_jobs_whose_record_has_expired_and_forgets_them(jobs):
    kept = jobs.create(request(), job_id="kept")
    jobs.create(request(), job_id="expired")
    jobs.redis.delete("athena:job:expired")
    assert [state.job_id for state in jobs.recent()] == [kept.job_id]
    assert jobs.job_ids() == ["kept"]


def test_the_default_job_ttl_is_a_week():
    assert JobStore(fakeredis.FakeRedis()).ttl_s == DEFAULT_JOB_TTL_S == 7 * 86400


def test_the_clients_job_ttl_comes_from_athena_job_ttl_s(monkeypatch):
    monkeypatch.setenv("ATHENA_JOB_TTL_S", "120")
    assert job_ttl_from_env() == 120
    monkeypatch.delenv("ATHENA_JOB_TTL_S")
    assert job_ttl_from_env() == DEFAULT_JOB_TTL_S


@pytest.mark.parametrize("value", ["a week", "0", "-5", "59"])
def test_a_job_ttl_that_is_not_a_number_of_seconds_of_at_least_a_minute_is_named(monkeypatch, value):
    monkeypatch.setenv("ATHENA_JOB_TTL_S", value)
    with pytest.raises(ConfigurationError, match="ATHENA_JOB_TTL_S"):
        job_ttl_from_env()
