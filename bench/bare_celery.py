"""The peer for `bench/queue_cpu.py`: a bare Celery app whose one task makes the
same HTTP call to the embeddings llama-server that `athena.embed` makes, and
nothing else (no payload model, no timing, no metrics, no retries, no events).

Its broker, result backend and server come from BARE_BROKER_URL,
BARE_RESULT_BACKEND and BARE_EMBEDDINGS_URL.
"""

from __future__ import annotations

import os

import httpx
from celery import Celery

app = Celery("bare", broker=os.environ.get("BARE_BROKER_URL", "redis://127.0.0.1:6379/10"),
             backend=os.environ.get("BARE_RESULT_BACKEND", "redis://127.0.0.1:6379/11"))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue="bare", result_expires=3600)

_http = httpx.Client(base_url=os.environ.get("BARE_EMBEDDINGS_URL", "http://127.0.0.1:8001"), timeout=30)


@app.task(name="bare.embed")
def embed(text: str) -> list[float]:
    response = _http.post("/v1/embeddings", json={"input": [text]})
    response.raise_for_status()
    return response.json()["data"][0]["embedding"]
