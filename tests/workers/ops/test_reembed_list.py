"""`athena-inference reembed list` after finished jobs' records have expired."""

from __future__ import annotations

import fakeredis
from click.testing import CliRunner

from athena_client.job_store import JobStore
from athena_client.jobs import PostgresSource, ReembedRequest
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
