"""The memory stores a re-embedding job reads and writes: a JSONL file or a PostgreSQL table.

A store yields its rows in a stable order, each with a position the runner
checkpoints, and writes vectors back with their vector space (model, profile,
size) and the hash of the text they were computed from. A row whose recorded
space and hash match is up to date and is skipped. A place holding vectors of
another space is refused before anything is written.
"""

from __future__ import annotations

from typing import Optional, Union

from athena_client.contract.jobs import JsonlSource, PostgresSource
from athena_inference.workers.reembedding.stores.jsonl import JsonlStore
from athena_inference.workers.reembedding.stores.postgres import PostgresStore
from athena_inference.workers.reembedding.stores.rows import MemoryStore, StoreRow, content_sha256

__all__ = ["JsonlStore", "MemoryStore", "PostgresStore", "StoreRow", "content_sha256", "open_store"]


def open_store(spec: Union[JsonlSource, PostgresSource], *, dimensions: Optional[int] = None) -> MemoryStore:
    """The store a job's source names; `dimensions`, the Matryoshka size the job asked for, names a default side table."""
    if isinstance(spec, JsonlSource):
        return JsonlStore(spec)
    return PostgresStore(spec, dimensions=dimensions)
