"""The `rerank` queue: documents ordered by their relevance to a query.

A bi-encoder: the query is embedded as a query and the documents as documents
under the lane's profile (its prefixes), in one server request each, and
ranked by cosine. A cross-encoder served by llama-server `--reranking` would
score each pair together; no such model installs here (docs/architecture.md)."""

from __future__ import annotations

import math

from athena_client.contract.payloads import RankedDocument, RerankRequest, RerankResult, ServerTiming
from athena_client.contract.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask, task_timing


@app.task(name=TaskName.RERANK.value, base=AthenaTask)
def rerank(request: RerankRequest) -> RerankResult:
    query = seams.embedder(Queue.RERANK).embed([request.query], purpose="query", long_text=request.long_text)
    documents = seams.embedder(Queue.RERANK).embed(list(request.documents), purpose="document", long_text=request.long_text)
    scores = [cosine(query.vectors[0], vector) for vector in documents.vectors]
    # Ties keep the documents' order, so the same request always ranks the same way.
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: request.top_n]
    return RerankResult(
        results=[RankedDocument(index=i, score=scores[i]) for i in order],
        model=documents.origin.model,
        profile=documents.origin.profile,
        timing=task_timing(documents.origin.model, both(query.timing, documents.timing)),
    )


def cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return math.fsum(x * y for x, y in zip(a, b)) / norms if norms else 0.0


def both(first: ServerTiming, second: ServerTiming) -> ServerTiming:
    """The two server requests as one: tokens and milliseconds added."""
    total = lambda name: (getattr(first, name) or 0) + (getattr(second, name) or 0)  # noqa: E731
    tokens, request_ms = total("prompt_tokens"), total("request_ms")
    return ServerTiming(prompt_tokens=tokens, request_ms=request_ms, tokens_per_second=tokens / request_ms * 1000 if request_ms else None)
