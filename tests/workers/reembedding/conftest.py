"""The bulk lane of a stack of its own: Redis, the bulk embedding server (two copies) and its worker,
and a jobs worker. Its own, because these tests kill workers; the jobs worker knows
two named PostgreSQL connections, as a production one would from its environment."""

from __future__ import annotations

import pytest

from athena_client.client import AthenaClient
from athena_client.shared_redis.job_store import JobStore
from tests.harness import Stack, bulk_copies_env, local_stack_env, redis_port

# Never a real secret: the machine's PostgreSQL trusts local connections and ignores it.
SECRET = "s3cret-4d1f9e0b-never-in-redis"


def with_password(dsn: str, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    user, at, host = rest.partition("@")
    return f"{scheme}://{user}:{password}@{host}"


@pytest.fixture(scope="package")
def lane(provisioned, postgres_dsn, pgvector_dsn, tmp_path_factory):
    env = local_stack_env(
        LLAMACPP_N_THREADS="1",
        # Two single-thread copies, as `up` gives a 2-core machine (one more thread each would stall them).
        **bulk_copies_env(2),
        ATHENA_JOB_LEASE_S="3",
        # Short, so a batch held by a killed worker is sent again soon; long
        # enough for the batch holding a 66,000-character memory (about 130
        # windows) on one busy thread.
        ATHENA_JOB_BATCH_TIMEOUT_S="30",
        ATHENA_RETRY_ATTEMPTS="3",
        ATHENA_RETRY_BACKOFF_S="0.2",
        ATHENA_POSTGRES_ATHENA=pgvector_dsn,
        ATHENA_POSTGRES_SECRETDB=with_password(postgres_dsn, SECRET),
    )
    stack = Stack(tmp_path_factory.mktemp("reembed-logs"), env)
    try:
        stack.redis(redis_port(env))
        stack.bulk_servers()
        stack.worker("embeddings_bulk", "w1")
        stack.worker("jobs", "w1")
        client = AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
        stack.wait_for_workers(client, {"embeddings_bulk@w1", "jobs@w1"})
        stack.client = client
        stack.jobs = JobStore.from_url(env["ATHENA_RESULT_BACKEND"])
        yield stack
        client.close()
    finally:
        stack.stop_all()
