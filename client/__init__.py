"""The contract between Athena and the inference workers, and the client over it.

The contract modules (payloads, consolidation, jobs, health, routes, errors,
validation) need pydantic only; workers and callers both import them, and they
import nothing from the workers. `AthenaClient` and `AsyncAthenaClient` also
need celery and redis, so they are imported on first use: importing
`athena_client.payloads` does not pull in Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from athena_client.async_client import AsyncAthenaClient
    from athena_client.client import AthenaClient
    from athena_client.health import HealthReport

# name -> the module that defines it (PEP 562: resolved on first access).
_LAZY = {
    "AthenaClient": "athena_client.client",
    "AsyncAthenaClient": "athena_client.async_client",
    "HealthReport": "athena_client.health",
}

__all__ = ["AthenaClient", "AsyncAthenaClient", "HealthReport"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'athena_client' has no attribute {name!r}")
