"""`athena.core.embeddings.EmbeddingModel`, over the `embeddings` queue.

Synchronous, with Athena's names and shapes: `embed(text) -> list[float]`,
`embed_batch(texts) -> list[list[float]]`, `embedding_dim`, `get_version()`,
`get_model_info()`, `embed_with_version(...)`, and the `cosine_similarity`
helper Athena imports beside it. Unlike Athena's, it never
answers with a made-up vector when the server is down: every failure raises
(an `AthenaError`, which is a `RuntimeError`), because a memory stored with a
mock vector is silently lost to search.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Optional

from athena_client.compat.connection import shared_client
from athena_client.contract.payloads import EmbedPurpose

# Athena's embed waited 30 s for its server.
EMBED_TIMEOUT_S = 30.0
PROBE_TEXT = "test"
# Athena's EmbeddingModel is built in hot paths; the served model and its
# dimension are looked up once a minute, not on every construction.
PROBE_TTL_S = 60.0

_probe_lock = threading.Lock()
_probe: Optional[tuple[float, str, int]] = None


def served_model() -> tuple[str, int]:
    """(model id, dimension) the embeddings queue serves now, looked up at most once a minute."""
    global _probe
    with _probe_lock:
        if _probe is None or time.monotonic() - _probe[0] > PROBE_TTL_S:
            out = shared_client(EMBED_TIMEOUT_S).embed(PROBE_TEXT)
            _probe = (time.monotonic(), out.model, out.dimension)
        return _probe[1], _probe[2]


class EmbeddingModel:
    """Athena's embedding model, as one more client of the embeddings queue.

    `model` and `provider` are accepted for compatibility: which model embeds
    is the embeddings worker's choice (its server's), and `get_version()`
    reports it. Like Athena's, construction checks that embedding works and
    raises `RuntimeError` when it does not.
    """

    def __init__(self, model: Optional[str] = None, provider: Optional[str] = None, version: Optional[str] = None):
        self.provider = "llamacpp"
        self.model = model
        self._client = shared_client(EMBED_TIMEOUT_S)
        served, self.embedding_dim = served_model()
        self.version = version or served
        self.model_metadata = {"model": served}
        self.backend = "embeddings queue"

    def get_version(self) -> str:
        return self.version or "unknown"

    def get_model_info(self) -> dict:
        return {
            "version": self.get_version(),
            "provider": self.provider,
            "backend": self.backend,
            "embedding_dim": self.embedding_dim,
            "metadata": self.model_metadata,
        }

    def embed(self, text: str, purpose: EmbedPurpose = "document") -> list[float]:
        """`text`'s vector, as a memory to store unless `purpose="query"` (a text
        searched with): the workers add the prefix the model was trained with
        for it, e.g. nomic's `search_document: ` or `search_query: `."""
        return self._client.embed(text, purpose=purpose).embedding

    def embed_query(self, text: str) -> list[float]:
        """`embed(text, purpose="query")`: the vector to search memories with."""
        return self.embed(text, purpose="query")

    def embed_batch(self, texts: list[str], purpose: EmbedPurpose = "document") -> list[list[float]]:
        """Every text in as few server requests as the batch size allows (Athena sent one request per text)."""
        return [result.embedding for result in self._client.embed_batch(list(texts), purpose=purpose)]

    def embed_with_version(self, text: str) -> dict:
        return self._versioned(self.embed(text))

    def embed_batch_with_versions(self, texts: list[str]) -> list[dict]:
        return [self._versioned(vector) for vector in self.embed_batch(texts)]

    def _versioned(self, embedding: list[float]) -> dict:
        return {"embedding": embedding, "version": self.get_version(), "provider": self.provider, "timestamp": datetime.now().isoformat()}


def cosine_similarity(vec1, vec2) -> float:
    """Athena's helper, imported beside EmbeddingModel: the cosine of two vectors (lists or
    numpy arrays), 0.0 when either is all zeros."""
    a, b = [float(x) for x in vec1], [float(x) for x in vec2]
    if len(a) != len(b):
        raise ValueError(f"vectors of different lengths ({len(a)} and {len(b)}) have no cosine")
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0
