"""`athena-inference reembed list` after finished jobs' records have expired."""

from __future__ import annotations

import fakeredis
from click.testing import CliRunner

from athena_client.contract.jobs import PostgresSource, ReembedRequest
from athena_client.shared_redis.job_store import JobStore
from athena_inference.workers.ops import reembed_cli


def test_reembed_list_skips_jobs_whose_record_has_expired(monkeypatch):
    jobs = JobStore(fakeredis.FakeRedis())
    request = ReembedRequest(source=PostgresSource(dsn="postgresql://athena@db/athena"))
    jobs.create(request, job_id="still-here")
    jobs.create(request, job_id="expired")
    # What Redis does once ATHENA_JOB_TTL_S has run out: the record goes, its index entry stays.
    jobs.redis.delete("athena:job:expired")
    monkeypatch.setattr(reembed_cli, "_jobs", lambda: jobs)
    done = CliRunner().invoke(reembed_cli.reembed, ["list"])
    assert done.exit_code == 0, done.output
    assert "still-here" in done.output and "expired" not in done.output


def test_reembed_list_names_the_vector_space_each_job_made(monkeypatch):
    jobs = JobStore(fakeredis.FakeRedis())
    jobs.create(ReembedRequest(source=PostgresSource(dsn="postgresql://athena@db/athena")), job_id="started")
    space = "all-MiniLM-L6-v2 [all-MiniLM-L6-v2, 384-d]"
    jobs.start("started", runner="r", model="all-MiniLM-L6-v2", profile="all-MiniLM-L6-v2", dimension=384, space=space, total=3)
    jobs.create(ReembedRequest(source=PostgresSource(dsn="postgresql://athena@db/athena")), job_id="queued")
    monkeypatch.setattr(reembed_cli, "_jobs", lambda: jobs)
    done = CliRunner().invoke(reembed_cli.reembed, ["list"])
    assert done.exit_code == 0, done.output
    lines = {line.split()[0]: line for line in done.output.splitlines()}
    assert lines["started"].endswith(space)
    # A job not yet started names no space.
    assert "[" not in lines["queued"]
