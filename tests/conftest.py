"""Session fixtures that start the real parts once: redis-server, both
llama-servers with the default models, and one Celery worker per queue, each in
its own process on free ports.
"""

from __future__ import annotations

import os

import pytest

from athena_client.sender import TaskSender
from athena_inference.config.settings import load_settings
from athena_inference.workers.provision import Provisioned, provision
from tests.harness import Stack, free_port, wait_for


@pytest.fixture(scope="session")
def provisioned() -> Provisioned:
    # Builds llama-server and prepares the models on a fresh machine (minutes,
    # with progress); seconds when the cache under ~/.cache/athena-inference is warm.
    return provision(load_settings())


@pytest.fixture(scope="session")
def stack(provisioned, tmp_path_factory) -> Stack:
    logs = tmp_path_factory.mktemp("logs")
    redis_port, embed_port, reason_port = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        ATHENA_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        ATHENA_RESULT_BACKEND=f"redis://127.0.0.1:{redis_port}/1",
        LLAMACPP_EMBEDDINGS_URL=f"http://127.0.0.1:{embed_port}",
        LLAMACPP_REASONING_URL=f"http://127.0.0.1:{reason_port}",
        LLAMACPP_N_THREADS="1",
        ATHENA_RETRY_ATTEMPTS="4",
        ATHENA_RETRY_BACKOFF_S="0.2",
        ATHENA_RETRY_BACKOFF_MAX_S="1",
        PYTHONUNBUFFERED="1",
    )
    stack = Stack(logs, env)
    try:
        stack.redis(redis_port)
        stack.llama("embeddings", env["LLAMACPP_EMBEDDINGS_URL"])
        stack.llama("reasoning", env["LLAMACPP_REASONING_URL"])
        for queue in ("embeddings", "reasoning"):
            stack.worker(queue, "main")
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="session")
def sender(stack) -> TaskSender:
    sender = TaskSender(stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"])
    wanted = {"embeddings@main", "reasoning@main"}

    def online() -> bool:
        replies = sender.app.control.ping(timeout=1.0) or []
        return wanted <= {name for reply in replies for name in reply}

    wait_for(online, "workers", 60)
    yield sender
    sender.close()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"stack", "sender", "provisioned"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
