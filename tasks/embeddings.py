"""The `embeddings` queue: embed one text, or a batch in one server request;
and the `embeddings_bulk` lane's batches, where a bad text fails alone.

Every rule about the texts (blank ones, long ones, the model's prefixes, the
vectors' size) lives in the lane's `Embedder` (`workers/embedder.py`); this
module only shapes the results."""

from __future__ import annotations

from athena_client.contract.jobs import EmbedBulkRequest, EmbedBulkResult
from athena_client.contract.payloads import EmbedBatchRequest, EmbeddingBatchResult, EmbeddingResult, EmbedRequest
from athena_client.contract.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask, task_timing


@app.task(name=TaskName.EMBED.value, base=AthenaTask)
def embed(request: EmbedRequest) -> EmbeddingResult:
    """One text to one vector; concurrent ones in a threaded worker share a server request."""
    out = seams.embedder(Queue.EMBEDDINGS, coalesced=True).embed(
        [request.text], purpose=request.purpose, long_text=request.long_text, dimensions=request.dimensions
    )
    return EmbeddingResult(
        embedding=out.vectors[0],
        note=out.notes[0],
        **out.origin.model_dump(),
        timing=task_timing(out.origin.model, out.timing),
    )


@app.task(name=TaskName.EMBED_BATCH.value, base=AthenaTask)
def embed_batch(request: EmbedBatchRequest) -> EmbeddingBatchResult:
    """Many texts in one server request, vectors in input order."""
    out = seams.embedder(Queue.EMBEDDINGS).embed(
        list(request.texts), purpose=request.purpose, long_text=request.long_text, dimensions=request.dimensions
    )
    return EmbeddingBatchResult(
        embeddings=out.vectors,
        notes=out.cut_notes,
        **out.origin.model_dump(),
        timing=task_timing(out.origin.model, out.timing),
    )


@app.task(name=TaskName.EMBED_BULK.value, base=AthenaTask)
def embed_bulk(request: EmbedBulkRequest) -> EmbedBulkResult:
    """A re-embedding batch on the bulk lane. Blank or unembeddable texts, and
    over-long texts its policy does not cut, get an error of their own; the rest is embedded."""
    out = seams.embedder(Queue.EMBEDDINGS_BULK).embed_items(
        list(request.texts), purpose=request.purpose, long_text=request.long_text, dimensions=request.dimensions
    )
    return EmbedBulkResult(
        embeddings=out.vectors,
        errors=out.errors,
        notes=out.notes,
        **out.origin.model_dump(),
        timing=task_timing(out.origin.model, out.timing),
    )
