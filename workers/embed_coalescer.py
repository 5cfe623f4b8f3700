"""Concurrent embeds in one worker process, sent to the server together.

A threaded embeddings worker runs many `embed` tasks at once. Each asks this
coalescer for its vectors. While fewer than `max_in_flight` requests are out,
a call goes to the server at once, alone: a lone embed pays one lock. Calls that
arrive while the server is busy wait; when a request comes back, its sender
hands the next request to the first waiting call, which sends everything that
waited meanwhile (up to `max_texts` texts) as one request and gives each call
its own vectors. This is how TEI and Infinity batch, moved in front of
llama-server, whose own slots would otherwise take the texts a few at a time
over many HTTP requests.

No call waits longer than `max_wait_s` for a place: past it, it goes alone,
beside the requests already out. A merged request refused for its input (a
text too long, say) is not the others' problem: each of its calls is sent
again alone, so the refusal reaches only the call it belongs to. An error that
is not about the input (the server down) reaches every call in the request,
and each task deals with it as it would alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from athena_client.contract.errors import InvalidInput
from athena_inference.workers.llama_server import Embeddings


@dataclass(eq=False)
class _Call:
    texts: list[str]
    arrived: float
    # Set when the call has its answer, or has been given a request to send.
    wake: threading.Event = field(default_factory=threading.Event)
    answer: Optional[Embeddings] = None
    error: Optional[BaseException] = None
    # The calls this one sends for, itself first, once it is woken to lead.
    leads: Optional[list["_Call"]] = None


class EmbedCoalescer:
    def __init__(
        self,
        embed: Callable[[list[str]], Embeddings],
        *,
        max_in_flight: int,
        max_texts: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._embed = embed
        self.max_in_flight, self.max_texts, self.max_wait_s = max_in_flight, max_texts, max_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: deque[_Call] = deque()
        self._in_flight = 0

    def embed(self, texts: list[str]) -> Embeddings:
        """Vectors for `texts`, in order, with the timing of the request they went in."""
        call = _Call(list(texts), self._clock())
        with self._lock:
            if self._in_flight < self.max_in_flight and not self._waiting:
                self._in_flight += 1
                call.leads = [call]
            else:
                self._waiting.append(call)
        if call.leads is None and not call.wake.wait(self.max_wait_s):
            with self._lock:
                if call in self._waiting:
                    # Waited long enough for a place: go alone, beside the requests out.
                    self._waiting.remove(call)
                    self._in_flight += 1
                    call.leads = [call]
        if call.leads is None:
            # Taken into a request: woken with the answer, or to send it.
            call.wake.wait()
        if call.leads is not None:
            self._send(call.leads)
            self._hand_on()
        if call.error is not None:
            raise call.error
        assert call.answer is not None
        return call.answer

    def _send(self, calls: list[_Call]) -> None:
        """One request for `calls`; every call but the sender (calls[0]) is woken with its answer."""
        self._answer(calls)
        for other in calls[1:]:
            other.wake.set()

    def _answer(self, calls: list[_Call]) -> None:
        texts = [text for call in calls for text in call.texts]
        sent = self._clock()
        try:
            out = self._embed(texts)
        except InvalidInput as exc:
            if len(calls) == 1:
                calls[0].error = exc
                return
            # Whose text was refused is each call's own business: each goes again alone.
            for call in calls:
                self._answer([call])
            return
        except BaseException as exc:  # noqa: BLE001 - every call of the request gets what it got
            for call in calls:
                call.error = exc
            return
        shares = _token_shares(out.timing.prompt_tokens, [sum(len(t) for t in call.texts) for call in calls])
        start = 0
        for call, tokens in zip(calls, shares):
            end = start + len(call.texts)
            timing = {"prompt_tokens": tokens, "batch_texts": len(texts), "wait_ms": max(0.0, (sent - call.arrived) * 1000)}
            call.answer = Embeddings(vectors=out.vectors[start:end], model=out.model, timing=out.timing.model_copy(update=timing))
            start = end

    def _hand_on(self) -> None:
        """A request came back: the first call that waited sends the next one, or the place is free."""
        with self._lock:
            batch: list[_Call] = []
            texts = 0
            while self._waiting and (not batch or texts + len(self._waiting[0].texts) <= self.max_texts):
                call = self._waiting.popleft()
                batch.append(call)
                texts += len(call.texts)
            if not batch:
                self._in_flight -= 1
                return
            batch[0].leads = batch
        batch[0].wake.set()


def _token_shares(total: int, sizes: list[int]) -> list[int]:
    """The request's prompt tokens shared by text length, summing to `total`:
    the server counts tokens per request only, and metrics add them up per call."""
    weights = [size or 1 for size in sizes]
    exact = [total * weight / sum(weights) for weight in weights]
    shares = [int(x) for x in exact]
    # The largest remainders get the tokens that rounding down left over.
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - shares[i], reverse=True)[: total - sum(shares)]:
        shares[i] += 1
    return shares
