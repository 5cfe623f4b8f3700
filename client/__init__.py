"""Athena's client of the inference workers, and the contract it shares with them.

Three rooms:

- `contract/`: what a message and a result are (payloads, consolidation,
  jobs, health, routes, errors, validation, limits, grammar). Pydantic and the
  standard library only; the workers and the client both import it.
- `shared_redis/`: the Redis both sides share: clients that wait out a
  restart, kombu's Redis transport fixed, the Celery options both apps set, and
  the records both keep there (metrics, job records).
- the client itself (`client.py`, `async_client.py`, `transport.py`,
  `result_waiter.py`, `compat/`): sends tasks by name and reads typed
  results. Nothing on the workers' side imports it but the callers there (the
  operator commands, the job runner sending batches to the bulk lane).

`athena_client.errors`, `.payloads`, `.consolidation` and `.jobs`, Athena's
documented import paths, give the contract's own names. `AthenaClient` and
`AsyncAthenaClient` need celery and redis, so they are imported on first use:
importing the contract does not pull in Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from athena_client.async_client import AsyncAthenaClient
    from athena_client.client import AthenaClient
    from athena_client.contract.health import HealthReport

# name -> the module that defines it (PEP 562: resolved on first access).
_LAZY = {
    "AthenaClient": "athena_client.client",
    "AsyncAthenaClient": "athena_client.async_client",
    "HealthReport": "athena_client.contract.health",
}

__all__ = ["AthenaClient", "AsyncAthenaClient", "HealthReport"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'athena_client' has no attribute {name!r}")
