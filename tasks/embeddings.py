"""The `embeddings` queue: embed one text, or a batch in one server request."""

from __future__ import annotations

from athena_client.errors import DimensionMismatch
from athena_client.payloads import EmbedBatchRequest, EmbeddingBatchResult, EmbeddingResult, EmbedRequest
from athena_client.routes import Queue, TaskName
from athena_inference.config.settings import get_settings
from athena_inference.tasks import resources
from athena_inference.tasks.base import TaskClock, inference_task
from athena_inference.workers.llama_server import Embeddings


def _embed(texts: list[str]) -> Embeddings:
    out = resources.llama(Queue.EMBEDDINGS).embed(texts)
    expected = get_settings().embedding_dim
    sizes = {len(vector) for vector in out.vectors}
    if sizes != {expected}:
        raise DimensionMismatch(
            f"{out.model} returned {sorted(sizes)}-dimensional vectors but LLAMACPP_EMBEDDING_DIM is {expected}"
        )
    return out


@inference_task(TaskName.EMBED, EmbedRequest)
def embed(request: EmbedRequest, clock: TaskClock) -> EmbeddingResult:
    """One text to one vector."""
    out = _embed([request.text])
    return EmbeddingResult(
        embedding=out.vectors[0],
        dimension=len(out.vectors[0]),
        model=out.model,
        timing=clock.finish(out.model, out.timing),
    )


@inference_task(TaskName.EMBED_BATCH, EmbedBatchRequest)
def embed_batch(request: EmbedBatchRequest, clock: TaskClock) -> EmbeddingBatchResult:
    """Many texts in one server request, vectors in input order."""
    out = _embed(list(request.texts))
    return EmbeddingBatchResult(
        embeddings=out.vectors,
        dimension=len(out.vectors[0]),
        model=out.model,
        timing=clock.finish(out.model, out.timing),
    )
