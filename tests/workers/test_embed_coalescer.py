"""Concurrent embeds merged into one request while the server is busy, with threads and a fake server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from athena_client.contract.errors import InputTooLong, ServerUnavailable
from athena_client.contract.payloads import ServerTiming
from athena_inference.workers.embed_coalescer import EmbedCoalescer, _token_shares
from athena_inference.workers.llama_server import Embeddings


class SlowServer:
    """Answers each request after `delay_s`, one vector per text ([len(text)]), and records the requests."""

    def __init__(self, delay_s: float = 0.05, refuse: str | None = None, down: bool = False) -> None:
        self.delay_s, self.refuse, self.down = delay_s, refuse, down
        self.requests: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> Embeddings:
        with self._lock:
            self.requests.append(list(texts))
        time.sleep(self.delay_s)
        if self.down:
            raise ServerUnavailable("http://llama:8001 is down")
        if self.refuse is not None and self.refuse in texts:
            raise InputTooLong(f"input {texts.index(self.refuse)} is too long", positions=(texts.index(self.refuse),))
        tokens = sum(len(text.split()) for text in texts)
        return Embeddings(
            vectors=[[float(len(text))] for text in texts],
            model="m",
            timing=ServerTiming(prompt_tokens=tokens, request_ms=self.delay_s * 1000),
        )


def coalescer(server: SlowServer, **kwargs) -> EmbedCoalescer:
    options = dict(max_in_flight=1, max_texts=32, max_wait_s=5.0)
    options.update(kwargs)
    return EmbedCoalescer(server.embed, **options)


def at_once(c: EmbedCoalescer, texts: list[str]) -> list:
    """Every text from its own thread, the first a little ahead so the rest find the server busy."""
    with ThreadPoolExecutor(len(texts)) as pool:
        first = pool.submit(c.embed, [texts[0]])
        time.sleep(0.01)
        rest = [pool.submit(c.embed, [text]) for text in texts[1:]]
        return [f.result() if f.exception() is None else f.exception() for f in [first, *rest]]


def test_a_lone_embed_goes_at_once_and_alone():
    server = SlowServer(delay_s=0.0)
    out = coalescer(server).embed(["one text"])
    assert server.requests == [["one text"]]
    assert out.vectors == [[8.0]]
    assert out.timing.batch_texts == 1 and out.timing.wait_ms < 5


def test_embeds_that_find_the_server_busy_go_together_each_with_its_own_vector():
    server = SlowServer(delay_s=0.1)
    texts = [f"text number {i}" + "x" * i for i in range(12)]
    answers = at_once(coalescer(server), texts)
    assert [a.vectors for a in answers] == [[[float(len(t))]] for t in texts]
    assert server.requests[0] == [texts[0]]
    # The other eleven waited for the first request and went as one.
    assert sorted(map(len, server.requests)) == [1, 11]
    assert {a.timing.batch_texts for a in answers[1:]} == {11}
    assert all(a.timing.wait_ms > 20 for a in answers[1:])


def test_a_request_holds_no_more_than_max_texts():
    server = SlowServer(delay_s=0.1)
    at_once(coalescer(server, max_texts=4), [f"t{i}" for i in range(10)])
    assert [len(r) for r in server.requests] == [1, 4, 4, 1]


def test_with_two_places_two_requests_go_at_once():
    server = SlowServer(delay_s=0.1)
    c = coalescer(server, max_in_flight=2)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda t: c.embed([t]), ["a", "b"]))
    assert time.perf_counter() - started < 0.18
    assert sorted(server.requests) == [["a"], ["b"]]


def test_no_embed_waits_past_its_bound_for_company():
    server = SlowServer(delay_s=0.5)
    c = coalescer(server, max_wait_s=0.05)
    answers = at_once(c, ["slow one", "impatient"])
    # The second waited 50 ms, then went beside the first instead of after it.
    assert server.requests == [["slow one"], ["impatient"]]
    assert answers[1].timing.batch_texts == 1


def test_a_refused_text_fails_only_its_own_call():
    server = SlowServer(delay_s=0.05, refuse="far too long")
    answers = at_once(coalescer(server), ["first", "fine", "far too long", "also fine"])
    assert isinstance(answers[2], InputTooLong)
    assert [a.vectors for i, a in enumerate(answers) if i != 2] == [[[5.0]], [[4.0]], [[9.0]]]


def test_a_server_error_reaches_every_call_of_its_request_and_the_coalescer_goes_on():
    server = SlowServer(delay_s=0.05, down=True)
    c = coalescer(server)
    answers = at_once(c, ["a", "b", "c"])
    assert all(isinstance(a, ServerUnavailable) for a in answers)
    server.down = False
    assert c.embed(["after"]).vectors == [[5.0]]


def test_tokens_are_shared_by_length_and_add_up():
    assert _token_shares(10, [5]) == [10]
    assert sum(_token_shares(101, [3, 7, 11, 0])) == 101
    assert _token_shares(10, [1, 1]) == [5, 5]


@pytest.mark.parametrize("calls", [50, 200])
def test_many_threads_all_get_answers_and_nothing_is_left_waiting(calls):
    server = SlowServer(delay_s=0.002)
    c = coalescer(server, max_in_flight=2, max_texts=16, max_wait_s=0.02)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: c.embed([f"text {i:04d}"]), range(calls)))
    assert [a.vectors for a in answers] == [[[9.0]]] * calls
    assert sum(map(len, server.requests)) == calls
    assert not c._waiting and c._in_flight == 0
