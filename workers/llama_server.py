"""The seam to one llama.cpp server: embeddings, chat completions, tokens, health.

One `LlamaServer` per worker process holds one pooled httpx client. Foreign
errors are translated here, once, into the project's exception family; the
retry policy (connection errors and 503 while the model loads) also lives here
and nowhere else.
"""

from __future__ import annotations

import re
import socket
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import httpx
from pydantic import BaseModel, ValidationError

from athena_client.contract.errors import Cancelled, InputTooLong, InvalidInput, ServerError, ServerTimeout, ServerUnavailable
from athena_client.contract.health import ServerHealth
from athena_client.contract.payloads import ServerTiming
from athena_client.contract.validation import describe
from athena_inference.config.retry import RetryPolicy
from athena_inference.workers.circuit_breaker import CircuitBreaker
from athena_inference.workers.generation_watch import CANCELLED, Generation

_TOO_LARGE = re.compile(r"input \((\d+) tokens\) is too large(?:.*current batch size: (\d+))?")


class Embeddings(BaseModel):
    vectors: list[list[float]]
    model: str
    timing: ServerTiming


class Completion(BaseModel):
    text: str
    finish_reason: Optional[str]
    model: str
    timing: ServerTiming


class _Tokens(BaseModel):
    tokens: list[int]


class _Detokenized(BaseModel):
    content: str


class _Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _OpenAIEmbeddingItem(BaseModel):
    index: int
    embedding: list[float]


class _OpenAIEmbeddings(BaseModel):
    model: str = "unknown"
    data: list[_OpenAIEmbeddingItem]
    usage: _Usage = _Usage()


class _Timings(BaseModel):
    prompt_n: int = 0
    prompt_ms: Optional[float] = None
    predicted_n: int = 0
    predicted_ms: Optional[float] = None
    predicted_per_second: Optional[float] = None
    cache_n: Optional[int] = None


class _Message(BaseModel):
    content: Optional[str] = ""


class _Choice(BaseModel):
    message: _Message
    finish_reason: Optional[str] = None


class _ChatCompletion(BaseModel):
    model: str = "unknown"
    choices: list[_Choice]
    usage: Optional[_Usage] = None
    timings: Optional[_Timings] = None


class _Delta(BaseModel):
    content: Optional[str] = None


class _StreamChoice(BaseModel):
    delta: _Delta = _Delta()
    finish_reason: Optional[str] = None


class _ChatChunk(BaseModel):
    """One server-sent event of a streamed completion; the last ones carry the usage and timings."""

    model: Optional[str] = None
    choices: list[_StreamChoice] = []
    usage: Optional[_Usage] = None
    timings: Optional[_Timings] = None
    error: Optional[dict[str, Any]] = None


class LlamaServer:
    """A llama.cpp server at `base_url`; `transport` lets tests answer in its place."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout,
        retry: RetryPolicy = RetryPolicy(),
        transport: Optional[httpx.BaseTransport] = None,
        sleep: Callable[[float], None] = time.sleep,
        breaker: Optional[CircuitBreaker] = None,
    ) -> None:
        self.base_url = base_url
        self._retry = retry
        # Shared with every worker process: a server that keeps failing is left alone for a while.
        self._breaker = breaker
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )

    @property
    def read_timeout_s(self) -> Optional[float]:
        """What bounds one request: for a streamed answer, the whole of it."""
        return self._client.timeout.read

    def close(self) -> None:
        self._client.close()

    # --- calls ---

    def embed(self, texts: list[str]) -> Embeddings:
        """All `texts` in one request; vectors come back in input order."""
        started = time.perf_counter()
        try:
            response = self._post("/v1/embeddings", {"input": texts})
        except (ServerError, InvalidInput) as exc:
            too_large = _TOO_LARGE.search(str(exc))
            if too_large:
                stated = int(too_large.group(2)) if too_large.group(2) else None
                raise self._which_too_long(texts, int(too_large.group(1)), stated) from None
            raise
        request_ms = (time.perf_counter() - started) * 1000
        body = _parse(_OpenAIEmbeddings, response)
        if len(body.data) != len(texts):
            raise ServerError(f"{self.base_url} returned {len(body.data)} embeddings for {len(texts)} texts")
        vectors = [item.embedding for item in sorted(body.data, key=lambda item: item.index)]
        prompt_tokens = body.usage.prompt_tokens
        return Embeddings(
            vectors=vectors,
            model=body.model,
            timing=ServerTiming(
                prompt_tokens=prompt_tokens,
                request_ms=request_ms,
                tokens_per_second=prompt_tokens / request_ms * 1000 if request_ms > 0 else None,
            ),
        )

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        response_format: Optional[dict[str, Any]] = None,
        grammar: Optional[str] = None,
        generation: Optional[Generation] = None,
    ) -> Completion:
        """One chat completion; the server applies the model's own chat template.
        With a `generation`, it is streamed: a caller can stop it and read it as it comes."""
        payload: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stop:
            payload["stop"] = stop
        if response_format is not None:
            payload["response_format"] = response_format
        if grammar is not None:
            payload["grammar"] = grammar
        started = time.perf_counter()
        if generation is not None:
            return self._streamed_chat(payload, generation, started)
        body = _parse(_ChatCompletion, self._post("/v1/chat/completions", payload))
        if not body.choices:
            raise ServerError(f"{self.base_url} returned no choices")
        return _completion(
            body.choices[0].message.content or "", body.choices[0].finish_reason, body.model, body.usage, body.timings, started
        )

    def _streamed_chat(self, payload: dict[str, Any], generation: Generation, started: float) -> Completion:
        """The completion as the server writes it, token by token, each piece handed
        to `generation`; stopping it closes the connection, which ends the server's work."""
        payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        text: list[str] = []
        finish_reason: Optional[str] = None
        model = "unknown"
        usage: Optional[_Usage] = None
        timings: Optional[_Timings] = None
        try:
            with self._stream("/v1/chat/completions", payload) as response:
                generation.attach(_closer(response))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = _parse_chunk(self.base_url, data)
                    model = chunk.model or model
                    usage = chunk.usage or usage
                    timings = chunk.timings or timings
                    for choice in chunk.choices:
                        if choice.delta.content:
                            text.append(choice.delta.content)
                            generation.piece(choice.delta.content)
                        finish_reason = choice.finish_reason or finish_reason
        except httpx.HTTPError as exc:
            if generation.stopped is None:
                if isinstance(exc, httpx.TimeoutException):
                    raise ServerTimeout(f"{self.base_url} stopped writing its answer ({exc.__class__.__name__})") from None
                broke_off = f"{self.base_url} broke off its answer after {len(text)} pieces ({exc.__class__.__name__}: {exc})"
                if text and generation.streams:
                    # Its reader has these pieces already: a retry would write the answer twice.
                    raise ServerError(broke_off) from None
                raise ServerUnavailable(broke_off) from None
        finally:
            generation.detach()
        if generation.stopped == CANCELLED:
            raise Cancelled(f"cancelled after {len(text)} pieces; the server stopped generating")
        if generation.stopped is not None:
            raise ServerTimeout(f"{self.base_url} did not finish its answer in time; it was stopped after {len(text)} pieces")
        return _completion("".join(text), finish_reason, model, usage, timings, started)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """The model's tokens for `text`; with `add_special`, as an input is counted
        (BOS/CLS, EOS/SEP included), without them as pieces to cut a text into."""
        return _parse(_Tokens, self._post("/tokenize", {"content": text, "add_special": add_special})).tokens

    def detokenize(self, tokens: list[int]) -> str:
        """The text `tokens` stand for (a model's tokenizer may normalise it: case, accents, spaces)."""
        return _parse(_Detokenized, self._post("/detokenize", {"tokens": tokens})).content

    def health(self) -> ServerHealth:
        """One look, no retries: 503 while loading counts as not ready."""
        try:
            response = self._client.get("/health")
        except httpx.HTTPError as exc:
            return ServerHealth(ready=False, detail=f"unreachable: {exc.__class__.__name__}: {exc}")
        if response.status_code == 200:
            model = self._model_id()
            if model is None:
                return ServerHealth(ready=False, detail="answers /health but lists no model at /v1/models")
            return ServerHealth(ready=True, detail="ok", model=model)
        if response.status_code == 503:
            return ServerHealth(ready=False, detail="loading model (503)")
        return ServerHealth(ready=False, detail=f"HTTP {response.status_code}: {response.text[:200]}")

    def _model_id(self) -> Optional[str]:
        try:
            models = self._client.get("/v1/models").json()["data"]
            return str(models[0]["id"]) if models else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
            return None

    def slots(self) -> Optional[int]:
        """The server's --parallel slots from /props, or None if it cannot say right now."""
        try:
            return int(self._client.get("/props").json()["total_slots"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    # --- transport, retries and error mapping ---

    def _post(self, path: str, payload: dict[str, Any], stream: bool = False) -> httpx.Response:
        if self._breaker is None:
            return self._post_with_retries(path, payload, stream)
        self._breaker.before_call()
        unavailable = False
        try:
            return self._post_with_retries(path, payload, stream)
        except ServerUnavailable as exc:
            unavailable = True
            exc.retry_after = self._breaker.failure()
            raise
        finally:
            # Any answer, an error or a slow one included, shows the server is up.
            if not unavailable:
                self._breaker.success()

    @contextmanager
    def _stream(self, path: str, payload: dict[str, Any]) -> Iterator[httpx.Response]:
        response = self._post(path, payload, stream=True)
        try:
            yield response
        finally:
            response.close()

    def _post_with_retries(self, path: str, payload: dict[str, Any], stream: bool = False) -> httpx.Response:
        last_problem = ""
        for attempt in range(1, self._retry.attempts + 1):
            try:
                response = self._client.send(self._client.build_request("POST", path, json=payload), stream=stream)
                if stream and not response.is_success:
                    response.read()
                    response.close()
            except httpx.TimeoutException as exc:
                if not isinstance(exc, httpx.ConnectTimeout):
                    # The server got the request and is busy with it: retrying would double its load.
                    raise ServerTimeout(f"{self.base_url}{path} did not answer in time ({exc.__class__.__name__})") from None
                last_problem = f"connect timeout: {exc}"
            except httpx.TransportError as exc:
                last_problem = f"{exc.__class__.__name__}: {exc}"
            else:
                if response.status_code == 503:
                    last_problem = "503: model still loading"
                elif response.is_success:
                    return response
                else:
                    raise _status_error(self.base_url, path, response)
            if attempt < self._retry.attempts:
                self._sleep(self._retry.delay(attempt))
        raise ServerUnavailable(
            f"{self.base_url}{path} unavailable after {self._retry.attempts} attempts ({last_problem})"
        )

    def _which_too_long(self, texts: list[str], tokens: int, stated: Optional[int]) -> InputTooLong:
        """The error naming the over-long texts, with the server's limit on it as `limit`
        (None when the server did not state its batch size: a caller cutting texts to
        fit must not guess it)."""
        error = self._name_too_long(texts, tokens, stated if stated is not None else tokens - 1)
        error.limit = stated
        return error

    def _name_too_long(self, texts: list[str], tokens: int, limit: int) -> InputTooLong:
        # Only on this rare path do we tokenize text by text, to name the culprits.
        limit_hint = f"the server refused an input of {tokens} tokens"
        try:
            lengths = [len(self.tokenize(text)) for text in texts]
        except ServerError:
            return InputTooLong(f"{limit_hint}; shorten or split the texts", positions=())
        culprits = [i for i, n in enumerate(lengths) if n > limit] or [lengths.index(max(lengths))]
        return InputTooLong(
            f"{limit_hint} (the server's batch, ATHENA_EMBEDDING_MAX_TOKENS for the embedded server); "
            f"texts at positions {culprits} have {[lengths[i] for i in culprits]} tokens; split them before embedding",
            positions=tuple(culprits),
        )


def _completion(
    text: str, finish_reason: Optional[str], model: str, usage: Optional[_Usage], timings: Optional[_Timings], started: float
) -> Completion:
    timings = timings or _Timings()
    return Completion(
        text=text,
        finish_reason=finish_reason,
        model=model,
        timing=ServerTiming(
            prompt_tokens=usage.prompt_tokens if usage else timings.prompt_n,
            generated_tokens=usage.completion_tokens if usage else timings.predicted_n,
            prompt_ms=timings.prompt_ms,
            generated_ms=timings.predicted_ms,
            request_ms=(time.perf_counter() - started) * 1000,
            tokens_per_second=timings.predicted_per_second,
            cached_tokens=timings.cache_n,
        ),
    )


def _parse_chunk(base_url: str, data: str) -> _ChatChunk:
    try:
        chunk = _ChatChunk.model_validate_json(data)
    except ValidationError as exc:
        raise ServerError(f"unreadable event in {base_url}'s streamed answer: {describe(exc)}") from None
    if chunk.error:
        raise ServerError(f"{base_url} failed while answering: {chunk.error.get('message') or chunk.error}")
    return chunk


def _closer(response: httpx.Response) -> Callable[[], None]:
    """What ends `response` from another thread at once: shutting its socket down
    wakes the read blocked on it (closing would not) and tells the server the
    caller is gone. A transport without a socket (a test's) is closed instead."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        return lambda: sock.shutdown(socket.SHUT_RDWR)
    return response.close


def _status_error(base_url: str, path: str, response: httpx.Response) -> Exception:
    message = _error_message(response)
    where = f"{base_url}{path}"
    if response.status_code == 400:
        return InvalidInput(f"{where} refused the request: {message}")
    return ServerError(f"{where} answered HTTP {response.status_code}: {message}")


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    return response.text[:500]


def _parse(model: type[BaseModel], response: httpx.Response):
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ServerError(f"unreadable reply from {response.request.url}: {describe(exc)}") from None
