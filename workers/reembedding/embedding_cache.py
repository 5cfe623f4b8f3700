"""Vectors already made, by (vector space, text hash), so a duplicate text is embedded once.

The key is the space (`athena_client.contract.payloads.vector_space`: model, profile,
size), not the bare model name: the same model under another profile (another
prefix) or cut to another Matryoshka size makes other vectors, which must
never be served from the cache in their place.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Sequence

import redis

PREFIX = "athena:embcache:"


class EmbeddingCache:
    """Vectors as float32 bytes in Redis, each with a time to live."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def _key(self, space: str, sha: str) -> str:
        return f"{PREFIX}{hashlib.sha256(space.encode()).hexdigest()[:16]}:{sha}"

    def get_many(self, space: str, hashes: Sequence[str]) -> dict[str, list[float]]:
        if not hashes or self.ttl_s == 0:
            return {}
        found: dict[str, list[float]] = {}
        for sha, blob in zip(hashes, self.redis.mget([self._key(space, h) for h in hashes]), strict=True):
            if blob is not None:
                vector = array("f")
                vector.frombytes(blob)
                found[sha] = vector.tolist()
        return found

    def put_many(self, space: str, vectors: dict[str, list[float]]) -> None:
        if not vectors or self.ttl_s == 0:
            return
        pipe = self.redis.pipeline(transaction=False)
        for sha, vector in vectors.items():
            pipe.set(self._key(space, sha), array("f", vector).tobytes(), ex=self.ttl_s)
        pipe.execute()
