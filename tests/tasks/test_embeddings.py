"""The embedding tasks' own logic, run in-process over a MockTransport server."""

from __future__ import annotations

import json

import httpx
import pytest

from athena_client.errors import DimensionMismatch, InvalidInput
from athena_client.routes import Queue
from athena_inference.tasks import seams
from athena_inference.tasks.embeddings import embed, embed_batch, embed_bulk
from athena_inference.workers.llama_server import LlamaServer


def serve_vectors(dimension: int):
    def handler(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        data = [{"index": i, "embedding": [float(i)] * dimension} for i in range(len(texts))]
        return httpx.Response(200, json={"model": "fake", "data": data, "usage": {"prompt_tokens": 3 * len(texts)}})

    return handler



def use_server(dimension: int) -> None:
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(serve_vectors(dimension)))
    seams.use_llama(Queue.EMBEDDINGS, server)


def test_embed_batch_returns_vectors_with_timing_and_records_metrics(metrics):
    use_server(384)
    out = embed_batch(texts=["a", "b"])
    assert out["dimension"] == 384 and len(out["embeddings"]) == 2
    assert out["timing"]["server"]["prompt_tokens"] == 6
    assert metrics.stats("athena.embed_batch").success == 1


def test_vectors_of_the_wrong_size_fail_with_dimension_mismatch(metrics):
    use_server(768)
    with pytest.raises(DimensionMismatch, match="LLAMACPP_EMBEDDING_DIM is 384"):
        embed(text="a")
    assert metrics.stats("athena.embed").failures == 1


def test_invalid_payload_fails_before_reaching_the_server(metrics):
    use_server(384)
    with pytest.raises(InvalidInput, match="text"):
        embed(text="")


def refuse_long_texts(limit_chars: int):
    """A server that refuses any batch holding a text over `limit_chars` (one token per character)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": list(range(len(json.loads(request.content)["content"])))})
        texts = json.loads(request.content)["input"]
        longest = max(len(t) for t in texts)
        if longest > limit_chars:
            message = f"input ({longest} tokens) is too large to process. increase the physical batch size (current batch size: {limit_chars})"
            return httpx.Response(500, json={"error": {"message": message}})
        data = [{"index": i, "embedding": [float(len(t))] * 384} for i, t in enumerate(texts)]
        return httpx.Response(200, json={"model": "fake", "data": data, "usage": {"prompt_tokens": 1}})

    return handler


def test_embed_bulk_fails_bad_texts_one_by_one_and_embeds_the_rest(metrics):
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(refuse_long_texts(10)))
    seams.use_llama(Queue.EMBEDDINGS_BULK, server)
    out = embed_bulk(texts=["short", "", "x" * 50, "tiny", "y" * 11])
    assert [e and e["error"] for e in out["errors"]] == [None, "InvalidInput", "InputTooLong", None, "InputTooLong"]
    assert [v and v[0] for v in out["embeddings"]] == [5.0, None, None, 4.0, None]
    assert out["model"] == "fake" and out["dimension"] == 384


def test_embed_bulk_with_nothing_embeddable_still_answers(metrics):
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(refuse_long_texts(10)))
    seams.use_llama(Queue.EMBEDDINGS_BULK, server)
    out = embed_bulk(texts=[" ", "z" * 20])
    assert out["embeddings"] == [None, None]
    assert [e["error"] for e in out["errors"]] == ["InvalidInput", "InputTooLong"]
