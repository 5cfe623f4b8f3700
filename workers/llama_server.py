"""The seam to one llama.cpp server: embeddings, chat completions, tokens, health.

One `LlamaServer` per worker process holds one pooled httpx client. Foreign
errors are translated here, once, into the project's exception family; the
retry policy (connection errors and 503 while the model loads) also lives here
and nowhere else.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Optional

import httpx
from pydantic import BaseModel, ValidationError

from athena_client.contract.errors import InputTooLong, InvalidInput, ServerError, ServerTimeout, ServerUnavailable
from athena_client.contract.health import ServerHealth
from athena_client.contract.payloads import ServerTiming
from athena_client.contract.validation import describe
from athena_inference.config.retry import RetryPolicy
from athena_inference.workers.circuit_breaker import CircuitBreaker

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
    ) -> Completion:
        """One chat completion; the server applies the model's own chat template."""
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
        response = self._post("/v1/chat/completions", payload)
        request_ms = (time.perf_counter() - started) * 1000
        body = _parse(_ChatCompletion, response)
        if not body.choices:
            raise ServerError(f"{self.base_url} returned no choices")
        timings = body.timings or _Timings()
        return Completion(
            text=body.choices[0].message.content or "",
            finish_reason=body.choices[0].finish_reason,
            model=body.model,
            timing=ServerTiming(
                prompt_tokens=body.usage.prompt_tokens if body.usage else timings.prompt_n,
                generated_tokens=body.usage.completion_tokens if body.usage else timings.predicted_n,
                prompt_ms=timings.prompt_ms,
                generated_ms=timings.predicted_ms,
                request_ms=request_ms,
                tokens_per_second=timings.predicted_per_second,
                cached_tokens=timings.cache_n,
            ),
        )

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

    def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        if self._breaker is None:
            return self._post_with_retries(path, payload)
        self._breaker.before_call()
        unavailable = False
        try:
            return self._post_with_retries(path, payload)
        except ServerUnavailable as exc:
            unavailable = True
            exc.retry_after = self._breaker.failure()
            raise
        finally:
            # Any answer, an error or a slow one included, shows the server is up.
            if not unavailable:
                self._breaker.success()

    def _post_with_retries(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        last_problem = ""
        for attempt in range(1, self._retry.attempts + 1):
            try:
                response = self._client.post(path, json=payload)
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
