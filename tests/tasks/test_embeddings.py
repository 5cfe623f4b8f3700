"""The embedding tasks' own logic, run in-process over a MockTransport server."""

from __future__ import annotations

import json

import fakeredis
import httpx
import pytest

from athena_client.errors import DimensionMismatch, InvalidInput
from athena_client.routes import Queue
from athena_inference.tasks import resources
from athena_inference.tasks.embeddings import embed, embed_batch
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.metrics import MetricsStore


def serve_vectors(dimension: int):
    def handler(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        data = [{"index": i, "embedding": [float(i)] * dimension} for i in range(len(texts))]
        return httpx.Response(200, json={"model": "fake", "data": data, "usage": {"prompt_tokens": 3 * len(texts)}})

    return handler


@pytest.fixture
def metrics():
    store = MetricsStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    resources.use_metrics(store)
    yield store
    resources.reset()


def use_server(dimension: int) -> None:
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(serve_vectors(dimension)))
    resources.use_llama(Queue.EMBEDDINGS, server)


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
