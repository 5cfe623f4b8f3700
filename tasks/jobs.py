"""The `jobs` queue: long-running work that drives the other queues.

Its worker waits on the bulk lane's results by design; it serves no other
queue, so that wait can never hold up the tasks it waits for.
"""

from __future__ import annotations

from athena_client.contract.jobs import JobState, ReembedJobRef
from athena_client.contract.routes import TaskName
from athena_inference.config.celery import app
from athena_inference.config.settings import get_settings
from athena_inference.tasks.base import AthenaTask
from athena_inference.workers.reembedding.runner import build_runner


@app.task(name=TaskName.REEMBED.value, base=AthenaTask)
def reembed(request: ReembedJobRef) -> JobState:
    """Run (or resume) a re-embedding job created in Redis; returns its final state."""
    settings = get_settings()
    # A redelivered copy of a job another runner holds waits out at most one lease.
    return build_runner(request.job_id, settings).run(wait_for_lease_s=settings.job_lease_s)
