"""The `embeddings` queue: embed one text, or a batch in one server request;
and the `embeddings_bulk` lane's batches, where a bad text fails alone.

Every task honours its request's `long_text` policy through `long_texts.py`;
this module only shapes the results."""

from __future__ import annotations

from typing import Optional

from athena_client.errors import DimensionMismatch, InputTooLong
from athena_client.jobs import EmbedBulkRequest, EmbedBulkResult, ItemError
from athena_client.payloads import (
    EmbedBatchRequest,
    EmbeddingBatchResult,
    EmbeddingResult,
    EmbedRequest,
    LongTextPolicy,
    VectorNote,
    text_problem,
)
from athena_client.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.config.settings import get_settings
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask, TaskClock
from athena_inference.tasks.long_texts import Embed, Vectors, embed_texts
from athena_inference.workers.llama_server import Embeddings, LlamaServer


def _vectors(
    texts: list[str], policy: LongTextPolicy, queue: Queue = Queue.EMBEDDINGS, send: Optional[Embed] = None
) -> Vectors:
    """Vectors for `texts` under `policy`, each server request through `send`
    (the server's own `embed` unless given), its vectors checked before anything is made of them.
    All of one call's requests go to one copy of the server (the bulk lane has several)."""

    def on(server: LlamaServer) -> Vectors:
        embed = send or server.embed
        return embed_texts(server, texts, policy, lambda inputs: _checked(embed(inputs)))

    return seams.server_pool(queue).call(on)


def _checked(out: Embeddings) -> Embeddings:
    expected = get_settings().embedding_dim
    sizes = {len(vector) for vector in out.vectors}
    if sizes != {expected}:
        raise DimensionMismatch(
            f"{out.model} returned {sorted(sizes)}-dimensional vectors but LLAMACPP_EMBEDDING_DIM is {expected}"
        )
    return out


@app.task(name=TaskName.EMBED.value, base=AthenaTask)
def embed(request: EmbedRequest, clock: TaskClock) -> EmbeddingResult:
    """One text to one vector; concurrent ones in a threaded worker share a server request."""
    out = _vectors([request.text], request.long_text, send=seams.embed_coalescer().embed)
    return EmbeddingResult(
        embedding=out.vectors[0],
        dimension=len(out.vectors[0]),
        model=out.model,
        note=out.notes[0],
        timing=clock.finish(out.model, out.timing),
    )


@app.task(name=TaskName.EMBED_BATCH.value, base=AthenaTask)
def embed_batch(request: EmbedBatchRequest, clock: TaskClock) -> EmbeddingBatchResult:
    """Many texts in one server request, vectors in input order."""
    out = _vectors(list(request.texts), request.long_text)
    return EmbeddingBatchResult(
        embeddings=out.vectors,
        dimension=len(out.vectors[0]),
        model=out.model,
        notes=out.cut_notes,
        timing=clock.finish(out.model, out.timing),
    )


TOO_LONG = (
    "the text has more tokens than the embedding server takes in one input "
    "(ATHENA_EMBEDDING_MAX_TOKENS for the embedded server); split it before embedding"
)
CANNOT_CUT = (
    "the text has more tokens than the embedding server takes in one input, "
    "and it could not be cut into windows that the server takes"
)


@app.task(name=TaskName.EMBED_BULK.value, base=AthenaTask)
def embed_bulk(request: EmbedBulkRequest, clock: TaskClock) -> EmbedBulkResult:
    """A re-embedding batch on the bulk lane. Blank or unembeddable texts, and
    over-long texts its policy does not cut, get an error of their own; the rest is embedded."""
    texts = list(request.texts)
    errors: list[ItemError | None] = [
        ItemError(id=i, error="InvalidInput", message=problem) if (problem := text_problem(text)) else None
        for i, text in enumerate(texts)
    ]
    # Each refusal fails at least one more text, so this ends.
    while True:
        todo = [i for i, error in enumerate(errors) if error is None]
        if not todo:
            return _bulk_result([None] * len(texts), errors, [], None, clock)
        try:
            out = _vectors([texts[i] for i in todo], request.long_text, Queue.EMBEDDINGS_BULK)
            break
        except InputTooLong as exc:
            # The over-long texts are named; without names there is nothing to drop but everything.
            culprits = [todo[p] for p in exc.positions] or todo
            for i in culprits:
                errors[i] = ItemError(id=i, error="InputTooLong", message=_too_long_message(exc, request.long_text))
    vectors: list[list[float] | None] = [None] * len(texts)
    notes: list[Optional[VectorNote]] = [None] * len(texts)
    for i, vector, note in zip(todo, out.vectors, out.notes, strict=True):
        vectors[i], notes[i] = vector, note
    return _bulk_result(vectors, errors, notes if any(notes) else [], out, clock)


def _too_long_message(exc: InputTooLong, policy: LongTextPolicy) -> str:
    # The exception's own message numbers texts within this attempt, not the
    # batch, so a named text gets a message of its own.
    if not exc.positions:
        return str(exc)
    return TOO_LONG if policy == "fail" else CANNOT_CUT


def _bulk_result(
    vectors: list[list[float] | None],
    errors: list[ItemError | None],
    notes: list[Optional[VectorNote]],
    out: Vectors | None,
    clock: TaskClock,
) -> EmbedBulkResult:
    model = out.model if out else ""
    return EmbedBulkResult(
        embeddings=vectors,
        errors=errors,
        notes=notes,
        dimension=get_settings().embedding_dim,
        model=model,
        timing=clock.finish(model, out.timing if out else None),
    )
