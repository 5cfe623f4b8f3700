"""A generation's text as it is written: one Redis Stream per task, read by the caller.

The worker appends each piece the server sends (`athena:stream:<task id>`),
then an end entry; the caller reads from the start or from the last entry id it
saw, so a reader that lost its connection goes on where it stopped. A stream
holds at most one entry per token a request may ask for, plus its end, and is
gone `ttl_s` after its last entry.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import redis

STREAM_PREFIX = "athena:stream:"
# A stream's first entry id: read from here to get every piece.
START = "0-0"
# One entry per generated token at most (ReasonRequest.max_tokens is at most 32,768), and the end.
MAX_ENTRIES = 32_768 + 1
DEFAULT_TTL_S = 600
_TEXT = b"t"
_END = b"end"


def stream_key(task_id: str) -> str:
    return f"{STREAM_PREFIX}{task_id}"


class Entry(NamedTuple):
    """One entry: a piece of text, or the end (`end` says how the generation ended: "ok", or the error's class)."""

    id: str
    text: str = ""
    end: Optional[str] = None


class PieceStreams:
    """`client` is any redis-py client (fakeredis in unit tests)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.redis = client
        self._ttl_s = ttl_s

    # --- the worker's side ---

    def append(self, task_id: str, text: str, *, first: bool = False) -> None:
        key = stream_key(task_id)
        if first:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(key, {_TEXT: text}, maxlen=MAX_ENTRIES, approximate=True)
            pipe.expire(key, self._ttl_s)
            pipe.execute()
        else:
            self.redis.xadd(key, {_TEXT: text}, maxlen=MAX_ENTRIES, approximate=True)

    def end(self, task_id: str, how: str) -> None:
        key = stream_key(task_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {_END: how}, maxlen=MAX_ENTRIES, approximate=True)
        pipe.expire(key, self._ttl_s)
        pipe.execute()

    # --- the caller's side ---

    def read(self, task_id: str, after: str = START, *, block_ms: int = 1000) -> list[Entry]:
        """The entries after `after`, waiting up to `block_ms` for the first one; [] if none came."""
        reply = self.redis.xread({stream_key(task_id): after}, block=block_ms, count=512)
        entries: list[Entry] = []
        for _key, items in reply or []:
            for entry_id, fields in items:
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                fields = {(k.encode() if isinstance(k, str) else k): v for k, v in fields.items()}
                if _END in fields:
                    entries.append(Entry(entry_id, end=_text(fields[_END])))
                else:
                    entries.append(Entry(entry_id, text=_text(fields.get(_TEXT, b""))))
        return entries

    def exists(self, task_id: str) -> bool:
        return bool(self.redis.exists(stream_key(task_id)))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
