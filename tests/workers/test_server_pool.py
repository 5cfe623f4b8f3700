"""Copies of one llama-server behind one seam: least busy first, health of all."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from athena_client.contract.errors import InvalidInput, ServerUnavailable
from athena_inference.config.retry import RetryPolicy
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.server_pool import ServerPool


def server(url: str, healthy: bool = True, model: str = "m") -> LlamaServer:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200 if healthy else 503, json={})
        if request.url.path == "/v1/embeddings":
            return httpx.Response(200, json={"model": model, "data": [{"index": 0, "embedding": [0.5, 0.5]}]})
        return httpx.Response(200, json={"data": [{"id": model}]})

    return LlamaServer(url, timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(answer))


def url_of(server: LlamaServer) -> str:
    return server.base_url


def test_concurrent_calls_spread_over_the_copies_and_give_them_back():
    pool = ServerPool([server("http://a"), server("http://b")])
    assert pool.call(lambda first: (first.base_url, pool.call(lambda second: (second.base_url, pool.call(url_of))))) == (
        "http://a", ("http://b", "http://a"),
    )
    assert pool.call(url_of) == "http://a"


@pytest.mark.parametrize(("first", "expected"), [(0, "http://a"), (1, "http://b"), (2, "http://c"), (4, "http://b")])
def test_a_process_with_one_task_at_a_time_uses_its_own_copy(first, expected):
    pool = ServerPool([server("http://a"), server("http://b"), server("http://c")], first=first)
    assert [pool.call(url_of) for _ in range(3)] == [expected] * 3


def test_a_copy_is_given_back_when_the_call_fails():
    pool = ServerPool([server("http://a"), server("http://b")])

    def fail(_: LlamaServer) -> None:
        raise InvalidInput("a bad text")

    with pytest.raises(InvalidInput):
        pool.call(fail)
    assert pool.call(url_of) == "http://a"


def test_an_unavailable_copy_hands_the_call_to_the_next_and_only_the_last_refusal_is_raised():
    pool = ServerPool([server("http://a"), server("http://b"), server("http://c")], first=1)
    tried = []

    def work(copy: LlamaServer) -> str:
        tried.append(copy.base_url)
        if copy.base_url != "http://a":
            raise ServerUnavailable(f"{copy.base_url} is down")
        return "done"

    assert pool.call(work) == "done"
    assert tried == ["http://b", "http://c", "http://a"]

    def all_down(copy: LlamaServer) -> None:
        raise ServerUnavailable(f"{copy.base_url} is down")

    with pytest.raises(ServerUnavailable, match="http://a is down"):
        pool.call(all_down)


def test_an_embed_refused_by_a_copy_that_is_gone_is_answered_by_the_other():
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{closed.getsockname()[1]}"
    pool = ServerPool([LlamaServer(gone, timeout=httpx.Timeout(1.0), retry=RetryPolicy(attempts=1)), server("http://b")])
    out = pool.call(lambda copy: copy.embed(["the user likes tea"]))
    assert out.vectors == [[0.5, 0.5]] and out.model == "m"


def test_threads_never_share_a_copy_while_one_is_free():
    pool = ServerPool([server(f"http://{name}") for name in "abcd"])
    # No call returns before all four hold a copy at once.
    inside, leased = threading.Barrier(4), []

    def work(copy: LlamaServer) -> None:
        leased.append(copy.base_url)
        inside.wait(5)

    threads = [threading.Thread(target=pool.call, args=(work,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(leased) == ["http://a", "http://b", "http://c", "http://d"]


def test_the_pool_is_ready_only_when_every_copy_is_and_names_those_that_are_not():
    assert ServerPool([server("http://a"), server("http://b")]).health().model_dump() == {
        "ready": True, "detail": "ok (2 copies)", "model": "m", "profile": None,
    }
    sick = ServerPool([server("http://a"), server("http://b", healthy=False)]).health()
    assert not sick.ready
    assert sick.detail == "1 of 2 copies not ready: http://b: loading model (503)"


def test_copies_serving_different_models_are_not_ready():
    health = ServerPool([server("http://a", model="x"), server("http://b", model="y")]).health()
    assert not health.ready and "different models: x, y" in health.detail


def test_one_copy_reports_as_the_server_itself():
    assert ServerPool([server("http://a")]).health().detail == "ok"


def test_a_pool_needs_a_server():
    with pytest.raises(ValueError, match="at least one server"):
        ServerPool([])
