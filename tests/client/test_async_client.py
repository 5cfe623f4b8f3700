"""AsyncAthenaClient is spelled out: every method of AthenaClient, awaitable, with the same signature."""

import asyncio
import inspect
import threading

import pytest

from athena_client.async_client import AsyncAthenaClient
from athena_client.client import AthenaClient

PUBLIC = sorted(name for name, member in vars(AthenaClient).items() if callable(member) and not name.startswith("_"))
# What an async method returns where the sync one returns something to iterate.
ASYNC_COUNTERPARTS = {"ReasonStream": "AsyncReasonStream"}


@pytest.mark.parametrize("name", PUBLIC)
def test_every_client_method_is_a_coroutine_with_the_same_signature(name):
    method = getattr(AsyncAthenaClient, name)
    assert inspect.iscoroutinefunction(method), name
    sync = inspect.signature(getattr(AthenaClient, name))
    returns = ASYNC_COUNTERPARTS.get(sync.return_annotation, sync.return_annotation)
    assert inspect.signature(method) == sync.replace(return_annotation=returns)


def test_it_builds_no_attribute_on_the_fly():
    assert "__getattr__" not in vars(AsyncAthenaClient)


def test_a_call_runs_off_the_event_loop_and_returns_the_sync_result():
    client = AsyncAthenaClient("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1")
    seen = []

    def check_health():
        seen.append(threading.current_thread() is threading.main_thread())
        return {"embedding": True, "reasoning": False, "compression": True}

    client.sync.check_health = check_health
    assert asyncio.run(client.check_health()) == {"embedding": True, "reasoning": False, "compression": True}
    assert seen == [False]
