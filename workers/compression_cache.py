"""Answers to identical compression requests, kept in Redis for a while."""

from __future__ import annotations

import hashlib
import json
from typing import Optional

import redis

from athena_client.contract.payloads import CompressRequest
from athena_inference.workers.compressor import Compression

PREFIX = "athena:compress"


class CompressionCache:
    def __init__(self, client: redis.Redis, *, ttl_s: int, prefix: str = PREFIX) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._prefix = prefix

    def key(self, request: CompressRequest, method: Optional[str], model: Optional[str]) -> str:
        identity = {"request": request.model_dump(mode="json", exclude={"rate"}), "rate": request.effective_rate, "method": method, "model": model}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{self._prefix}:{digest}"

    def get(self, key: str) -> Optional[Compression]:
        raw = self._redis.get(key)
        return None if raw is None else Compression.model_validate_json(raw)

    def put(self, key: str, value: Compression) -> None:
        if self._ttl_s > 0:
            self._redis.set(key, value.model_dump_json(), ex=self._ttl_s)
