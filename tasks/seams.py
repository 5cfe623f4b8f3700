"""The seams of this worker process, made once per process after fork.

Celery's prefork parent imports the task modules before forking, so nothing is
built at import time: the first task in each child builds its client, and
`worker_process_shutdown` closes it. Tests swap a seam with `use_*`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

import httpx
import redis
from billiard.process import current_process
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from athena_client.contract.routes import Queue
from athena_client.shared_redis.cancel_requests import CancelRequests
from athena_client.shared_redis.piece_streams import PieceStreams
from athena_client.shared_redis.redis_connect import redis_client
from athena_inference.config.celery import WORKER_QUEUE_ENV
from athena_inference.config.servers import server_config
from athena_inference.config.settings import get_settings
from athena_inference.workers.circuit_breaker import CircuitBreaker
from athena_inference.workers.compression_cache import CompressionCache
from athena_inference.workers.deliveries import DeliveryCounter
from athena_inference.workers.embed_coalescer import EmbedCoalescer
from athena_inference.workers.embedder import Embedder
from athena_inference.workers.generation_watch import GenerationWatch
from athena_inference.workers.compressor import Compressor
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.server_pool import ServerPool
from athena_inference.workers.metrics import MetricsBuffer, MetricsSink

# httpx logs every request at INFO, which would bury the worker's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)

log = logging.getLogger(__name__)

_pools: dict[Queue, ServerPool] = {}
_embedders: dict[tuple[Queue, bool], Embedder] = {}
_metrics: Optional[MetricsSink] = None
_compressor: Optional[Compressor] = None
_compressor_loaded = threading.Event()
_compressor_lock = threading.Lock()
_compressor_loader: Optional[threading.Thread] = None
_compression_cache: Optional[CompressionCache] = None
_side_redis: Optional[redis.Redis] = None
_deliveries: Optional[DeliveryCounter] = None
_coalescer: Optional[EmbedCoalescer] = None
_caller_redis: Optional[redis.Redis] = None
_cancel_requests: Optional[CancelRequests] = None
_piece_streams: Optional[PieceStreams] = None
_generation_watch: Optional[GenerationWatch] = None
# A threaded worker's tasks ask for a seam at the same moment: each is made once.
_making = threading.RLock()


def llama_server_for(queue: Queue, url: str) -> LlamaServer:
    settings = get_settings()
    server = server_config(queue, settings)
    breaker = CircuitBreaker(
        side_redis(), url, cooldown_s=settings.breaker_cooldown_s, max_cooldown_s=settings.task_retry_backoff_max_s
    )
    return LlamaServer(
        url,
        timeout=httpx.Timeout(server.read_timeout_s, connect=settings.connect_timeout_s),
        retry=settings.retry_policy,
        breaker=breaker,
    )


def side_redis() -> redis.Redis:
    """The Redis of caches, metrics and the workers' shared bookkeeping (breakers, deliveries), one client per process."""
    global _side_redis
    with _making:
        if _side_redis is None:
            # Retrying through a Redis restart: a task's bookkeeping failing would fail the task.
            _side_redis = redis_client(get_settings().cache_redis_url, socket_timeout=5, socket_connect_timeout=5)
        return _side_redis


def caller_redis() -> redis.Redis:
    """The Redis callers read results from (the result backend's): cancel requests and streamed pieces meet there."""
    global _caller_redis
    with _making:
        if _caller_redis is None:
            _caller_redis = redis_client(get_settings().result_backend, socket_timeout=5, socket_connect_timeout=5)
        return _caller_redis


def cancel_requests() -> CancelRequests:
    global _cancel_requests
    with _making:
        if _cancel_requests is None:
            _cancel_requests = CancelRequests(caller_redis())
        return _cancel_requests


def piece_streams() -> PieceStreams:
    global _piece_streams
    with _making:
        if _piece_streams is None:
            _piece_streams = PieceStreams(caller_redis(), ttl_s=get_settings().stream_ttl_s)
        return _piece_streams


def generation_watch() -> GenerationWatch:
    """This process's watcher of running generations (its thread starts with the first one)."""
    global _generation_watch
    with _making:
        if _generation_watch is None:
            _generation_watch = GenerationWatch(cancel_requests())
        return _generation_watch


def deliveries() -> DeliveryCounter:
    global _deliveries
    with _making:
        if _deliveries is None:
            # Kept as long as the broker may redeliver a message, and a little more.
            _deliveries = DeliveryCounter(side_redis(), ttl_s=get_settings().visibility_timeout_s * 2)
        return _deliveries


def server_pool(queue: Queue) -> ServerPool:
    """Every copy of the queue's server (one, but for the bulk lane)."""
    with _making:
        if queue not in _pools:
            urls = server_config(queue, get_settings()).urls
            # A prefork pool process's index (0 outside one), so the processes start from different copies.
            index = getattr(current_process(), "index", None) or 0
            _pools[queue] = ServerPool([llama_server_for(queue, url) for url in urls], first=index)
        return _pools[queue]


def llama(queue: Queue) -> LlamaServer:
    """The queue's server; for the bulk lane, its first copy (lease through `server_pool` to spread)."""
    return server_pool(queue).servers[0]


def embed_coalescer() -> EmbedCoalescer:
    """Single embeds to the interactive server, sent together while it is busy
    (a threaded worker runs many at once; in a prefork process one is always alone)."""
    global _coalescer
    with _making:
        if _coalescer is None:
            settings = get_settings()
            _coalescer = EmbedCoalescer(
                llama(Queue.EMBEDDINGS).embed,
                max_in_flight=server_config(Queue.EMBEDDINGS, settings).slots,
                max_texts=settings.embed_coalesce_tasks,
                max_wait_s=settings.embed_coalesce_wait_ms / 1000,
            )
        return _coalescer


def embedder(queue: Queue, *, coalesced: bool = False) -> Embedder:
    """The only way a task embeds: the lane's servers under its model's profile
    (`workers/embedder.py`). `coalesced`: single embeds go through the
    coalescer, which shares a server request between concurrent ones."""
    key = (queue, coalesced)
    with _making:
        if key not in _embedders:
            server = server_config(queue, get_settings())
            assert server.profile is not None and server.dimension is not None, f"{queue.value} is no embedding lane"
            via = (lambda _server: embed_coalescer().embed) if coalesced else None
            _embedders[key] = Embedder(server_pool(queue), server.profile, server.dimension, via=via)
        return _embedders[key]


def metrics() -> MetricsSink:
    global _metrics
    with _making:
        if _metrics is None:
            settings = get_settings()
            client = redis_client(settings.metrics_redis_url, socket_timeout=5, socket_connect_timeout=5)
            _metrics = MetricsBuffer(client, window=settings.metrics_window, flush_s=settings.metrics_flush_s)
        return _metrics


def start_loading_compressor() -> None:
    """Load the compressor in the background; `compressor()` waits for it."""
    global _compressor_loader
    with _compressor_lock:
        if _compressor is None and _compressor_loader is None:
            _compressor_loader = threading.Thread(target=_load_compressor, name="compressor-load", daemon=True)
            _compressor_loader.start()


def _load_compressor() -> None:
    global _compressor
    started = time.perf_counter()
    try:
        loaded = Compressor.load(get_settings())
    except Exception as exc:  # noqa: BLE001 - a waiting task must get an answer, not hang
        log.exception("loading the compressor failed")
        loaded = Compressor.unusable(f"loading the compressor failed: {exc.__class__.__name__}: {exc}")
    _compressor = loaded
    _compressor_loaded.set()
    status = loaded.status
    if status.ready:
        log.warning("compressor ready: %s with %s, loaded in %.1f s", status.method, status.model, time.perf_counter() - started)
    else:
        log.warning("compressor NOT available: %s; tasks return prompts uncompressed", status.reason)


def compressor(timeout: float = 600) -> Compressor:
    if _compressor is None:
        start_loading_compressor()
        if not _compressor_loaded.wait(timeout):
            raise TimeoutError(f"the compressor did not load within {timeout:.0f} s")
    assert _compressor is not None
    return _compressor


def compression_cache() -> CompressionCache:
    global _compression_cache
    with _making:
        if _compression_cache is None:
            _compression_cache = CompressionCache(side_redis(), ttl_s=get_settings().compression_cache_ttl_s)
        return _compression_cache


def use_llama(queue: Queue, *servers: LlamaServer) -> None:
    global _coalescer
    _pools[queue] = ServerPool(servers)
    _coalescer = None
    _embedders.clear()


def use_metrics(sink: MetricsSink) -> None:
    global _metrics
    _metrics = sink


def reset() -> None:
    """Close and forget every seam; the next task makes new ones."""
    global _metrics, _compressor, _compression_cache, _compressor_loader, _side_redis, _deliveries, _coalescer
    global _caller_redis, _cancel_requests, _piece_streams, _generation_watch
    for pool in _pools.values():
        pool.close()
    _pools.clear()
    _embedders.clear()
    if isinstance(_metrics, MetricsBuffer):
        _metrics.close()
    _metrics = None
    _compressor = None
    _compression_cache = None
    _side_redis = None
    _deliveries = None
    _coalescer = None
    _caller_redis = _cancel_requests = _piece_streams = _generation_watch = None
    _compressor_loaded.clear()
    _compressor_loader = None


@worker_process_init.connect
def _load_at_start(**_):
    # Loading takes seconds and worker_process_init must return within 4 s, so
    # the compressor loads in a thread and the first task waits for it.
    if os.environ.get(WORKER_QUEUE_ENV) == Queue.COMPRESSION.value:
        start_loading_compressor()


@worker_process_shutdown.connect
def _close(**_):
    reset()


@worker_shutdown.connect
def _write_held_metrics(**_):
    # A threads pool runs its tasks in the main process, which no worker_process_shutdown reaches.
    if isinstance(_metrics, MetricsBuffer):
        _metrics.flush()
