"""LlamaServer against httpx.MockTransport: requests, replies, retries and error mapping."""

import json

import httpx
import pytest

from athena_client.contract.errors import Cancelled, InputTooLong, InvalidInput, ServerError, ServerTimeout, ServerUnavailable
from athena_inference.config.retry import RetryPolicy
from athena_inference.workers.generation_watch import CANCELLED, TIMED_OUT, Generation
from athena_inference.workers.llama_server import LlamaServer

BASE_URL = "http://llama.test:8001"


class Recorder:
    """Answers requests with `handler` and keeps every request it saw."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def bodies(self, path=None):
        return [json.loads(r.content) for r in self.requests if path is None or r.url.path == path]

    def paths(self):
        return [r.url.path for r in self.requests]


def make_server(handler, *, attempts=5, backoff_s=0.5, backoff_max_s=8.0):
    recorder = Recorder(handler)
    delays: list[float] = []
    server = LlamaServer(
        BASE_URL,
        timeout=httpx.Timeout(5.0),
        retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s, backoff_max_s=backoff_max_s),
        transport=httpx.MockTransport(recorder),
        sleep=delays.append,
    )
    return server, recorder, delays


def embeddings_reply(vectors_by_index, *, prompt_tokens=0, order=None, model="all-MiniLM-L6-v2"):
    order = order if order is not None else sorted(vectors_by_index)
    return httpx.Response(
        200,
        json={
            "model": model,
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vectors_by_index[i]} for i in order],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
    )


def chat_reply(text="Hello there.", *, finish_reason="stop", timings=None, usage=None):
    body = {
        "model": "SmolLM2-135M-Instruct",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
    }
    if timings is not None:
        body["timings"] = timings
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body)


def error_reply(status, message):
    return httpx.Response(status, json={"error": {"code": status, "message": message, "type": "server_error"}})


CHAT_ARGS = dict(max_tokens=64, temperature=0.2, top_p=0.9, stop=[])


# --- embeddings ---


def test_embed_sends_one_request_per_batch():
    texts = ["first", "second", "third", "fourth"]
    server, recorder, _ = make_server(lambda r: embeddings_reply({i: [float(i)] for i in range(4)}))
    server.embed(texts)
    assert recorder.paths() == ["/v1/embeddings"]
    assert recorder.bodies()[0]["input"] == texts


def test_embed_returns_vectors_in_input_order_when_server_answers_out_of_order():
    vectors = {0: [0.0, 0.5], 1: [1.0, 1.5], 2: [2.0, 2.5]}
    server, _, _ = make_server(lambda r: embeddings_reply(vectors, order=[2, 0, 1]))
    result = server.embed(["a", "b", "c"])
    assert result.vectors == [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]


def test_embed_captures_prompt_tokens_and_model_from_usage():
    server, _, _ = make_server(lambda r: embeddings_reply({0: [1.0], 1: [2.0]}, prompt_tokens=17, model="nomic"))
    result = server.embed(["a", "b"])
    assert result.timing.prompt_tokens == 17
    assert result.timing.generated_tokens == 0
    assert result.model == "nomic"
    assert result.timing.request_ms >= 0


def test_embed_without_usage_reports_zero_prompt_tokens():
    reply = httpx.Response(200, json={"model": "m", "data": [{"index": 0, "embedding": [1.0]}]})
    server, _, _ = make_server(lambda r: reply)
    assert server.embed(["a"]).timing.prompt_tokens == 0


def test_embed_with_fewer_vectors_than_texts_raises_server_error():
    server, _, _ = make_server(lambda r: embeddings_reply({0: [1.0]}))
    with pytest.raises(ServerError, match="1 embeddings for 2 texts"):
        server.embed(["a", "b"])


def _too_large_handler(status, token_counts):
    def handler(request):
        if request.url.path == "/v1/embeddings":
            return error_reply(
                status,
                "input (900 tokens) is too large to process. increase the physical batch size "
                "(current batch size: 512)",
            )
        if request.url.path == "/tokenize":
            content = json.loads(request.content)["content"]
            return httpx.Response(200, json={"tokens": list(range(token_counts[content]))})
        return httpx.Response(404)

    return handler


@pytest.mark.parametrize("status", [500, 400])
def test_embed_too_large_input_tokenizes_each_text_and_names_the_culprit(status):
    counts = {"short": 3, "very long text": 900, "medium": 40}
    server, recorder, delays = make_server(_too_large_handler(status, counts))
    with pytest.raises(InputTooLong) as caught:
        server.embed(["short", "very long text", "medium"])
    message = str(caught.value)
    assert "positions [1]" in message
    assert "900" in message
    assert recorder.paths() == ["/v1/embeddings", "/tokenize", "/tokenize", "/tokenize"]
    assert [b["content"] for b in recorder.bodies("/tokenize")] == ["short", "very long text", "medium"]
    assert delays == []


def test_input_too_long_is_a_kind_of_invalid_input():
    counts = {"x": 900}
    server, _, _ = make_server(_too_large_handler(500, counts))
    with pytest.raises(InvalidInput):
        server.embed(["x"])


def test_input_too_long_carries_the_batch_size_the_server_stated_as_its_limit():
    server, _, _ = make_server(_too_large_handler(500, {"short": 3, "long": 900}))
    with pytest.raises(InputTooLong) as caught:
        server.embed(["short", "long"])
    assert caught.value.limit == 512


def test_input_too_long_has_no_limit_when_the_server_does_not_state_its_batch_size():
    def handler(request):
        if request.url.path == "/v1/embeddings":
            return error_reply(500, "input (900 tokens) is too large to process")
        return httpx.Response(200, json={"tokens": list(range(900))})

    server, _, _ = make_server(handler)
    with pytest.raises(InputTooLong) as caught:
        server.embed(["long"])
    assert caught.value.positions == (0,)
    assert caught.value.limit is None


def test_embed_too_large_with_unreadable_tokenize_still_raises_input_too_long():
    def handler(request):
        if request.url.path == "/v1/embeddings":
            return error_reply(500, "input (900 tokens) is too large to process")
        return httpx.Response(200, content=b"not json")

    server, _, _ = make_server(handler)
    with pytest.raises(InputTooLong, match="shorten or split"):
        server.embed(["a", "b"])


def test_embed_other_server_error_is_not_mistaken_for_too_long_input():
    server, recorder, _ = make_server(lambda r: error_reply(500, "out of memory"))
    with pytest.raises(ServerError) as caught:
        server.embed(["a"])
    assert not isinstance(caught.value, InputTooLong)
    assert recorder.paths() == ["/v1/embeddings"]


# --- chat ---


def test_chat_posts_messages_to_chat_completions():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    server, recorder, _ = make_server(lambda r: chat_reply())
    server.chat(messages, max_tokens=64, temperature=0.2, top_p=0.8, stop=["\n\n"])
    assert recorder.paths() == ["/v1/chat/completions"]
    assert recorder.requests[0].method == "POST"
    body = recorder.bodies()[0]
    assert body["messages"] == messages
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.8
    assert body["stop"] == ["\n\n"]


def test_chat_omits_stop_and_response_format_when_not_given():
    server, recorder, _ = make_server(lambda r: chat_reply())
    server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    body = recorder.bodies()[0]
    assert "stop" not in body
    assert "response_format" not in body


def test_chat_passes_response_format_through():
    server, recorder, _ = make_server(lambda r: chat_reply("{}"))
    server.chat([{"role": "user", "content": "Hi"}], response_format={"type": "json_object"}, **CHAT_ARGS)
    assert recorder.bodies()[0]["response_format"] == {"type": "json_object"}


def test_chat_returns_text_and_finish_reason():
    server, _, _ = make_server(lambda r: chat_reply("The answer is 4.", finish_reason="length"))
    completion = server.chat([{"role": "user", "content": "2+2?"}], **CHAT_ARGS)
    assert completion.text == "The answer is 4."
    assert completion.finish_reason == "length"
    assert completion.model == "SmolLM2-135M-Instruct"


def test_chat_maps_llama_timings_into_server_timing():
    timings = {
        "prompt_n": 12,
        "prompt_ms": 30.5,
        "predicted_n": 8,
        "predicted_ms": 80.0,
        "predicted_per_second": 100.0,
        "cache_n": 2,
    }
    server, _, _ = make_server(lambda r: chat_reply(timings=timings))
    timing = server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS).timing
    assert timing.prompt_tokens == 12
    assert timing.prompt_ms == 30.5
    assert timing.generated_tokens == 8
    assert timing.generated_ms == 80.0
    assert timing.tokens_per_second == 100.0
    assert timing.cached_tokens == 2
    assert timing.request_ms >= 0


def test_chat_without_timings_reports_zero_tokens_and_no_rates():
    server, _, _ = make_server(lambda r: chat_reply())
    timing = server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS).timing
    assert timing.prompt_tokens == 0
    assert timing.generated_tokens == 0
    assert timing.prompt_ms is None
    assert timing.tokens_per_second is None


def test_chat_null_content_becomes_empty_text():
    reply = httpx.Response(
        200, json={"model": "m", "choices": [{"message": {"role": "assistant", "content": None}}]}
    )
    server, _, _ = make_server(lambda r: reply)
    assert server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS).text == ""


def test_chat_with_no_choices_raises_server_error():
    server, _, _ = make_server(lambda r: httpx.Response(200, json={"model": "m", "choices": []}))
    with pytest.raises(ServerError, match="no choices"):
        server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)


# --- retries ---


def test_503_then_200_is_retried_and_succeeds():
    answers = iter([httpx.Response(503, json={"error": {"message": "Loading model"}}), chat_reply("ok")])
    server, recorder, delays = make_server(lambda r: next(answers))
    completion = server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    assert completion.text == "ok"
    assert len(recorder.requests) == 2
    assert delays == [0.5]


def test_retry_delays_follow_exponential_backoff_capped_at_max():
    answers = iter([httpx.Response(503)] * 5 + [chat_reply("ok")])
    server, recorder, delays = make_server(lambda r: next(answers), attempts=6, backoff_s=0.5, backoff_max_s=3.0)
    server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(recorder.requests) == 6


def _refuse_connection(request):
    raise httpx.ConnectError("Connection refused", request=request)


def test_connect_error_every_time_raises_server_unavailable_after_exactly_attempts():
    server, recorder, delays = make_server(_refuse_connection, attempts=4, backoff_s=0.25, backoff_max_s=10.0)
    with pytest.raises(ServerUnavailable) as caught:
        server.embed(["a"])
    assert len(recorder.requests) == 4
    assert delays == [0.25, 0.5, 1.0]
    assert "4 attempts" in str(caught.value)
    assert "ConnectError" in str(caught.value)


def test_503_every_time_raises_server_unavailable():
    server, recorder, delays = make_server(lambda r: httpx.Response(503), attempts=3)
    with pytest.raises(ServerUnavailable, match="503"):
        server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    assert len(recorder.requests) == 3
    assert len(delays) == 2


def test_single_attempt_policy_does_not_sleep():
    server, recorder, delays = make_server(_refuse_connection, attempts=1)
    with pytest.raises(ServerUnavailable):
        server.embed(["a"])
    assert len(recorder.requests) == 1
    assert delays == []


def test_connect_timeout_is_retried_like_a_connection_error():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectTimeout("timed out connecting", request=request)
        return embeddings_reply({0: [1.0]})

    server, _, delays = make_server(handler)
    assert server.embed(["a"]).vectors == [[1.0]]
    assert delays == [0.5]


def test_read_timeout_raises_server_timeout_without_retry():
    def handler(request):
        raise httpx.ReadTimeout("timed out reading", request=request)

    server, recorder, delays = make_server(handler)
    with pytest.raises(ServerTimeout):
        server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    assert len(recorder.requests) == 1
    assert delays == []


# --- error mapping ---


def test_400_raises_invalid_input_with_servers_message_and_no_retry():
    server, recorder, delays = make_server(lambda r: error_reply(400, "'messages' must be an array"))
    with pytest.raises(InvalidInput, match="'messages' must be an array") as caught:
        server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    assert not isinstance(caught.value, InputTooLong)
    assert len(recorder.requests) == 1
    assert delays == []


def test_500_raises_server_error_with_status_and_no_retry():
    server, recorder, delays = make_server(lambda r: error_reply(500, "kv cache full"))
    with pytest.raises(ServerError) as caught:
        server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)
    assert "500" in str(caught.value)
    assert "kv cache full" in str(caught.value)
    assert len(recorder.requests) == 1
    assert delays == []


def test_error_without_json_body_uses_response_text():
    server, _, _ = make_server(lambda r: httpx.Response(502, text="Bad Gateway from proxy"))
    with pytest.raises(ServerError, match="Bad Gateway from proxy"):
        server.embed(["a"])


def test_malformed_json_reply_raises_server_error():
    server, _, _ = make_server(lambda r: httpx.Response(200, content=b"{not json"))
    with pytest.raises(ServerError, match="unreadable reply"):
        server.chat([{"role": "user", "content": "Hi"}], **CHAT_ARGS)


def test_json_reply_of_wrong_shape_raises_server_error():
    server, _, _ = make_server(lambda r: httpx.Response(200, json={"result": "fine"}))
    with pytest.raises(ServerError):
        server.embed(["a"])


# --- tokenize ---


def test_tokenize_posts_content_and_returns_tokens():
    server, recorder, _ = make_server(lambda r: httpx.Response(200, json={"tokens": [1, 2, 3]}))
    assert server.tokenize("hello") == [1, 2, 3]
    assert recorder.paths() == ["/tokenize"]
    assert recorder.bodies()[0] == {"content": "hello", "add_special": True}


def test_tokenize_without_special_tokens_asks_the_server_for_none():
    server, recorder, _ = make_server(lambda r: httpx.Response(200, json={"tokens": [7592]}))
    assert server.tokenize("hello", add_special=False) == [7592]
    assert recorder.bodies()[0] == {"content": "hello", "add_special": False}


def test_tokenize_unreadable_reply_raises_server_error():
    server, _, _ = make_server(lambda r: httpx.Response(200, json={"tokens": "many"}))
    with pytest.raises(ServerError, match="unreadable reply"):
        server.tokenize("hello")


# --- detokenize ---


def test_detokenize_posts_tokens_and_returns_the_content():
    server, recorder, _ = make_server(lambda r: httpx.Response(200, json={"content": " hello world"}))
    assert server.detokenize([7592, 2088]) == " hello world"
    assert recorder.paths() == ["/detokenize"]
    assert recorder.bodies()[0] == {"tokens": [7592, 2088]}


def test_detokenize_unreadable_reply_raises_server_error():
    server, _, _ = make_server(lambda r: httpx.Response(200, json={"text": "hello"}))
    with pytest.raises(ServerError, match="unreadable reply"):
        server.detokenize([7592])


def test_detokenize_refused_with_400_raises_invalid_input():
    server, _, _ = make_server(lambda r: error_reply(400, "tokens must be an array of integers"))
    with pytest.raises(InvalidInput, match="tokens must be an array"):
        server.detokenize([7592])


def test_detokenize_is_retried_while_the_model_loads():
    answers = iter([httpx.Response(503), httpx.Response(200, json={"content": "ok"})])
    server, recorder, delays = make_server(lambda r: next(answers))
    assert server.detokenize([1]) == "ok"
    assert len(recorder.requests) == 2 and delays == [0.5]


# --- health ---


def answer_health(models: list[str]):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m} for m in models]})
        return httpx.Response(200, json={"status": "ok"})

    return handler


def test_health_200_with_a_model_listed_is_ready():
    server, recorder, _ = make_server(answer_health(["all-MiniLM-L6-v2"]))
    health = server.health()
    assert (health.ready, health.model) == (True, "all-MiniLM-L6-v2")
    assert recorder.paths() == ["/health", "/v1/models"]
    assert recorder.requests[0].method == "GET"


def test_health_200_without_a_model_is_not_ready():
    server, _, _ = make_server(answer_health([]))
    health = server.health()
    assert health.ready is False and "no model" in health.detail


def test_health_503_is_not_ready_and_says_loading():
    server, _, delays = make_server(lambda r: httpx.Response(503, json={"error": {"message": "Loading model"}}))
    health = server.health()
    assert health.ready is False
    assert "loading" in health.detail
    assert delays == []


def test_health_connect_error_is_not_ready_without_retry():
    server, recorder, delays = make_server(_refuse_connection)
    health = server.health()
    assert health.ready is False
    assert "unreachable" in health.detail
    assert len(recorder.requests) == 1
    assert delays == []


def test_health_other_status_is_not_ready_with_status_in_detail():
    server, _, _ = make_server(lambda r: httpx.Response(500, text="boom"))
    health = server.health()
    assert health.ready is False
    assert "500" in health.detail


# --- streamed completions (a generation a caller can stop and read as it comes) ---


def sse(*events, done=True):
    lines = [f"data: {json.dumps(event)}\n\n" for event in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode())


def delta(text=None, finish_reason=None, **extra):
    return {"model": "SmolLM2", "choices": [{"delta": {"content": text} if text is not None else {}, "finish_reason": finish_reason}], **extra}


TIMINGS = {"prompt_n": 7, "prompt_ms": 20.0, "predicted_n": 3, "predicted_ms": 30.0, "predicted_per_second": 100.0}


def test_a_watched_chat_is_streamed_and_hands_each_piece_on_as_it_comes():
    server, recorder, _ = make_server(
        lambda r: sse(
            delta("Hel"), delta("lo"), delta(" there", finish_reason="stop"),
            {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}, "timings": TIMINGS},
        )
    )
    pieces: list[str] = []
    out = server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[],
                      generation=Generation("t1", deadline=None, on_piece=pieces.append))
    assert pieces == ["Hel", "lo", " there"] and out.text == "Hello there" and out.finish_reason == "stop"
    assert (out.model, out.timing.prompt_tokens, out.timing.generated_tokens, out.timing.prompt_ms) == ("SmolLM2", 7, 3, 20.0)
    [body] = recorder.bodies("/v1/chat/completions")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_a_chat_without_a_generation_is_not_streamed():
    server, recorder, _ = make_server(lambda r: chat_reply("Plain."))
    assert server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[]).text == "Plain."
    assert "stream" not in recorder.bodies()[0]


def test_a_generation_stopped_by_a_cancel_raises_cancelled_not_a_server_error():
    generation = Generation("t1", deadline=None)
    generation.stop(CANCELLED)
    server, _, _ = make_server(lambda r: sse(delta("never read")))
    with pytest.raises(Cancelled, match="the server stopped generating"):
        server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[], generation=generation)


def test_a_generation_stopped_for_time_is_a_server_timeout():
    generation = Generation("t1", deadline=None)
    generation.stop(TIMED_OUT)
    server, _, _ = make_server(lambda r: sse(delta("never read")))
    with pytest.raises(ServerTimeout, match="did not finish its answer in time"):
        server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[], generation=generation)


def test_an_error_event_in_the_stream_is_a_server_error_with_its_message():
    server, _, _ = make_server(lambda r: sse(delta("a"), {"error": {"code": 500, "message": "slot crashed"}}, done=False))
    with pytest.raises(ServerError, match="slot crashed"):
        server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[],
                    generation=Generation("t1", deadline=None))


def test_a_streamed_request_the_server_refuses_is_mapped_like_any_other():
    server, _, _ = make_server(lambda r: httpx.Response(400, json={"error": {"message": "bad grammar"}}))
    with pytest.raises(InvalidInput, match="bad grammar"):
        server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[],
                    generation=Generation("t1", deadline=None))


def test_a_streamed_request_is_retried_while_the_model_loads():
    replies = iter([httpx.Response(503, json={"error": {"message": "Loading model"}}), sse(delta("ok", finish_reason="stop"))])
    server, recorder, delays = make_server(lambda r: next(replies))
    out = server.chat([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, top_p=1, stop=[],
                      generation=Generation("t1", deadline=None))
    assert out.text == "ok" and len(recorder.requests) == 2 and len(delays) == 1
