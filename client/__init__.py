"""The contract between Athena and the inference workers.

This package is deliberately light (pydantic only): payload and result types,
the exception family and the task/queue table. Workers and callers both import
it; it imports nothing from the workers.
"""

from athena_client.client import AsyncAthenaClient, AthenaClient, HealthReport  # noqa: E402

__all__ = ["AthenaClient", "AsyncAthenaClient", "HealthReport"]
