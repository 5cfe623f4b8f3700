"""Embedding requests straight to llama-servers, no queue: the peer each queue figure is held against."""

from __future__ import annotations

import threading
import time
from typing import Optional

import httpx


def direct_texts_per_s(
    urls: list[str], texts: list[str], request: int, budget_s: Optional[float] = None
) -> tuple[float, list[list[float]], bool]:
    """texts/s over the requests answered, one sender per server taking the next
    request as it frees; past `budget_s` it stops (True) and rates what was done,
    since a stalled server may take minutes a request."""
    starts = iter(range(0, len(texts), request))
    lock = threading.Lock()
    answered: dict[int, list[list[float]]] = {}
    stopped = threading.Event()

    def send(url: str) -> None:
        with httpx.Client(base_url=url, timeout=budget_s or 600) as client:
            while not stopped.is_set():
                with lock:
                    start = next(starts, None)
                if start is None:
                    return
                try:
                    answer = client.post("/v1/embeddings", json={"input": texts[start : start + request]})
                except httpx.TimeoutException:
                    stopped.set()
                    return
                answer.raise_for_status()
                answered[start] = [item["embedding"] for item in answer.json()["data"]]
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    stopped.set()

    for url in urls:  # warm-up
        httpx.post(url + "/v1/embeddings", json={"input": texts[:1]}, timeout=60).raise_for_status()
    started = time.perf_counter()
    senders = [threading.Thread(target=send, args=(url,)) for url in urls]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    elapsed = time.perf_counter() - started
    # The vectors in text order, up to the first request not answered.
    vectors: list[list[float]] = []
    for start in range(0, len(texts), request):
        if start not in answered:
            break
        vectors += answered[start]
    done = sum(len(v) for v in answered.values())
    return done / elapsed, vectors, stopped.is_set()
