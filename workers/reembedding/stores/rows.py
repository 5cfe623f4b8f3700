"""What every memory store speaks: its rows, and the protocol the runner drives it through."""

from __future__ import annotations

import hashlib
from typing import Iterator, Optional, Protocol, Sequence, Union

from pydantic import BaseModel

# Rows are read a page at a time, so memory does not grow with the store.
PAGE = 1000


def content_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StoreRow(BaseModel):
    position: int
    id: Union[int, str]
    content: str = ""
    content_sha256: str = ""
    up_to_date: bool = False
    # Why this row cannot be embedded at all (a malformed line, a NULL text).
    problem: Optional[str] = None
    # How its new vector was made when not from the whole text ("truncated", "chunked").
    note: Optional[str] = None


class MemoryStore(Protocol):
    def describe(self) -> str: ...

    def prepare(self, model: str, dimension: int) -> None:
        """Make room for vectors of `model` (columns, sidecar), or refuse clearly."""

    def count(self) -> int: ...

    def rows(self, after: int, model: str) -> Iterator[StoreRow]:
        """Rows with a position past `after`, in position order."""

    def write(self, model: str, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        """Store vectors (and clear failed rows' old ones); return rows whose text changed meanwhile."""

    def finish(self, model: str) -> None:
        """Publish the result, once every row has been dealt with."""

    def close(self) -> None: ...
