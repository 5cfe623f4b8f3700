"""The `embeddings` queue: embed one text, or a batch in one server request;
and the `embeddings_bulk` lane's batches, where a bad text fails alone."""

from __future__ import annotations

from athena_client.errors import DimensionMismatch, InputTooLong
from athena_client.jobs import EmbedBulkRequest, EmbedBulkResult, ItemError
from athena_client.payloads import EmbedBatchRequest, EmbeddingBatchResult, EmbeddingResult, EmbedRequest
from athena_client.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.config.settings import get_settings
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask, TaskClock
from athena_inference.workers.llama_server import Embeddings


def _embed(texts: list[str], queue: Queue = Queue.EMBEDDINGS) -> Embeddings:
    out = seams.llama(queue).embed(texts)
    expected = get_settings().embedding_dim
    sizes = {len(vector) for vector in out.vectors}
    if sizes != {expected}:
        raise DimensionMismatch(
            f"{out.model} returned {sorted(sizes)}-dimensional vectors but LLAMACPP_EMBEDDING_DIM is {expected}"
        )
    return out


@app.task(name=TaskName.EMBED.value, base=AthenaTask)
def embed(request: EmbedRequest, clock: TaskClock) -> EmbeddingResult:
    """One text to one vector."""
    out = _embed([request.text])
    return EmbeddingResult(
        embedding=out.vectors[0],
        dimension=len(out.vectors[0]),
        model=out.model,
        timing=clock.finish(out.model, out.timing),
    )


@app.task(name=TaskName.EMBED_BATCH.value, base=AthenaTask)
def embed_batch(request: EmbedBatchRequest, clock: TaskClock) -> EmbeddingBatchResult:
    """Many texts in one server request, vectors in input order."""
    out = _embed(list(request.texts))
    return EmbeddingBatchResult(
        embeddings=out.vectors,
        dimension=len(out.vectors[0]),
        model=out.model,
        timing=clock.finish(out.model, out.timing),
    )


TOO_LONG = (
    "the text has more tokens than the embedding server takes in one input "
    "(ATHENA_EMBEDDING_MAX_TOKENS for the embedded server); split it before embedding"
)


@app.task(name=TaskName.EMBED_BULK.value, base=AthenaTask)
def embed_bulk(request: EmbedBulkRequest, clock: TaskClock) -> EmbedBulkResult:
    """A re-embedding batch on the bulk lane. Blank or over-long texts get an
    error of their own and the rest of the batch is embedded."""
    texts = list(request.texts)
    errors: list[ItemError | None] = [
        None if text.strip() else ItemError(id=i, error="InvalidInput", message="text is empty or only whitespace")
        for i, text in enumerate(texts)
    ]
    while True:
        todo = [i for i, error in enumerate(errors) if error is None]
        if not todo:
            return _bulk_result([None] * len(texts), errors, None, clock)
        try:
            out = _embed([texts[i] for i in todo], Queue.EMBEDDINGS_BULK)
            break
        except InputTooLong as exc:
            # The seam names the over-long texts; without names there is nothing to drop but everything.
            culprits = [todo[p] for p in exc.positions] or todo
            for i in culprits:
                errors[i] = ItemError(id=i, error="InputTooLong", message=TOO_LONG if exc.positions else str(exc))
    vectors: list[list[float] | None] = [None] * len(texts)
    for i, vector in zip(todo, out.vectors, strict=True):
        vectors[i] = vector
    return _bulk_result(vectors, errors, out, clock)


def _bulk_result(
    vectors: list[list[float] | None], errors: list[ItemError | None], out: Embeddings | None, clock: TaskClock
) -> EmbedBulkResult:
    model = out.model if out else ""
    return EmbedBulkResult(
        embeddings=vectors,
        errors=errors,
        dimension=get_settings().embedding_dim,
        model=model,
        timing=clock.finish(model, out.timing if out else None),
    )
