"""What every memory store speaks: its rows, and the protocol the runner drives it through.

Every vector a store writes is tagged with its space
(`athena_client.contract.payloads.vector_space`: model, profile, size), in the column
or field that held the bare model name before: vectors compare only within
one space, and a place that holds one space's vectors never takes another's.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Optional, Protocol, Sequence, Union

from pydantic import BaseModel

from athena_client.contract.errors import JobError
from athena_client.contract.payloads import VectorOrigin

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
    """A store is prepared for one vector space, then read and written in it."""

    def describe(self) -> str: ...

    def prepare(self, origin: VectorOrigin) -> None:
        """Make room for vectors of `origin`'s space (columns, sidecar); refuse
        clearly, before writing anything, where vectors of another space are kept."""

    def count(self) -> int: ...

    def rows(self, after: int) -> Iterator[StoreRow]:
        """Rows with a position past `after`, in position order; `up_to_date`
        when the row holds a vector of the prepared space for its current text."""

    def write(self, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        """Store vectors (and clear failed rows' old ones); return rows whose text changed meanwhile."""

    def finish(self) -> None:
        """Publish the result, once every row has been dealt with."""

    def close(self) -> None: ...


def another_space(place: str, found: Sequence[tuple[Optional[str], int]], space: str, instead: str) -> JobError:
    """The refusal of a job whose vectors would join another space's in `place`.

    `found` is (tag, rows) for each other space held there (None: vectors no
    job recorded). Tags of bare model names, as jobs wrote them before vectors
    named their space, count as another space: an older worker sent no prefix.
    """
    held = ", ".join(f"{rows} of {tag!r}" if tag else f"{rows} that no job recorded" for tag, rows in found)
    bare = [tag for tag, _ in found if tag and " [" not in tag]
    legacy = (
        f" {', '.join(repr(tag) for tag in bare)} is a bare model name, as jobs wrote before vectors named "
        "their space (model, profile, size); it counts as another space (docs/reembedding.md, \"Vectors of older jobs\", "
        "says how to adopt them)." if bare else ""
    )
    return JobError(
        f"refused before any write: {place} holds vectors of another space ({held}) and the bulk lane makes "
        f"{space!r}; vectors of two spaces in one place would be compared as if they were one.{legacy} {instead}"
    )
