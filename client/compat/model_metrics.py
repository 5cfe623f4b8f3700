"""`athena.monitoring.model_metrics`: Athena's performance monitor, reading the workers' shared metrics.

`get_embedding_stats()`, `get_reasoning_stats()`, `get_compression_stats()`
and `get_all_stats()` return Athena's dicts, with Athena's keys, computed from
the metrics every worker process records in Redis, so they cover every
process, not this one alone:

    embedding    athena.embed and athena.embed_batch, and athena.monitor.embedding
    reasoning    athena.reason, and athena.monitor.reasoning
    compression  athena.compress_prompt, and athena.monitor.compression

Counts and token sums cover every call since the figures were last reset;
latencies, dimensions and ratios the last ATHENA_METRICS_WINDOW calls.
`clear_history()` starts this monitor's figures afresh without wiping the
shared ones other readers see.

`record_embedding`, `record_reasoning` and `record_compression` take the
arguments as Athena's code and docs write them, positional
(`record_embedding(85.5, 768, 50)`) or by name (`latency_ms=` or `latency=`,
`tokens=` or `tokens_processed=`). Each keeps Athena's record in this process,
as before (`embedding_metrics`, ...), and records the call in the shared
metrics under `athena.monitor.<kind>`, so that every reader's stats count it.
The calls that go through the queues are counted by the workers already:
recording those again counts them twice.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional

from athena_client.compat.connection import metrics_url
from athena_client.shared_redis.metrics import KindStats, LatencyStats, MetricsReader, MetricsStore

logger = logging.getLogger(__name__)

# Where this monitor records the calls Athena's code reports itself.
RECORDED = {"embedding": "athena.monitor.embedding", "reasoning": "athena.monitor.reasoning", "compression": "athena.monitor.compression"}
KINDS = {
    "embedding": ["athena.embed", "athena.embed_batch", RECORDED["embedding"]],
    "reasoning": ["athena.reason", RECORDED["reasoning"]],
    "compression": ["athena.compress_prompt", RECORDED["compression"]],
}
_NOT_GIVEN: Any = object()


def _named(method: str, given: dict[str, Any], *, default: Any = _NOT_GIVEN) -> Any:
    """The one value given under any of a parameter's names (Athena writes `latency_ms` and `latency`)."""
    values = {name: value for name, value in given.items() if value is not _NOT_GIVEN}
    if len(values) > 1:
        raise TypeError(f"{method}() got {' and '.join(values)}: they are one argument; give one")
    if values:
        return next(iter(values.values()))
    if default is _NOT_GIVEN:
        raise TypeError(f"{method}() missing its {' or '.join(given)} argument")
    return default


@dataclass
class EmbeddingMetrics:
    timestamp: str
    latency_ms: float
    dimension: int
    tokens_processed: int
    status: str
    error_msg: Optional[str] = None

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class ReasoningMetrics:
    timestamp: str
    latency_ms: float
    prompt_tokens: int
    output_tokens: int
    total_tokens: int
    temperature: float
    status: str
    error_msg: Optional[str] = None

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class CompressionMetrics:
    timestamp: str
    latency_ms: float
    original_tokens: int
    compressed_tokens: int
    compression_ratio: float
    status: str
    error_msg: Optional[str] = None

    def to_dict(self) -> Dict:
        return asdict(self)


def _outcome(stats: KindStats) -> Optional[Dict]:
    """Athena's leading keys; None when nothing succeeded (Athena's dict ends there)."""
    if stats.count == 0:
        return None
    head = {"total_operations": stats.count, "successful": stats.success, "failed": stats.failures}
    if stats.success == 0:
        return {**head, "success_rate": 0.0}
    latency = stats.latency_ms
    return {
        **head,
        "success_rate": stats.success_rate,
        "avg_latency_ms": latency.avg,
        "min_latency_ms": latency.min,
        "max_latency_ms": latency.max,
    }


class ModelPerformanceMonitor:
    def __init__(self, max_history: int = 1000, reader: Optional[MetricsReader] = None):
        self.max_history = max_history
        self.reader = reader or MetricsStore.from_url(metrics_url())
        self.embedding_metrics: List[EmbeddingMetrics] = []
        self.reasoning_metrics: List[ReasoningMetrics] = []
        self.compression_metrics: List[CompressionMetrics] = []
        self._since: Optional[dict[str, dict[str, float]]] = None

    # --- Athena's own records, kept in this process ---

    def _keep(self, history: list, metric) -> None:
        history.append(metric)
        del history[: max(0, len(history) - self.max_history)]

    def record_embedding(
        self,
        latency_ms: float = _NOT_GIVEN,
        dimension: int = _NOT_GIVEN,
        tokens: int = _NOT_GIVEN,
        status: str = "success",
        error_msg: Optional[str] = None,
        *,
        latency: float = _NOT_GIVEN,
        tokens_processed: int = _NOT_GIVEN,
    ) -> EmbeddingMetrics:
        latency_ms = _named("record_embedding", {"latency_ms": latency_ms, "latency": latency})
        dimension = _named("record_embedding", {"dimension": dimension})
        tokens = _named("record_embedding", {"tokens": tokens, "tokens_processed": tokens_processed}, default=0)
        metric = EmbeddingMetrics(datetime.utcnow().isoformat(), latency_ms, dimension, tokens, status, error_msg)
        self._keep(self.embedding_metrics, metric)
        self._share("embedding", status, latency_ms, prompt_tokens=tokens, samples={"dimension": dimension})
        return metric

    def record_reasoning(
        self,
        latency_ms: float = _NOT_GIVEN,
        prompt_tokens: int = _NOT_GIVEN,
        output_tokens: int = _NOT_GIVEN,
        temperature: float = 0.7,
        status: str = "success",
        error_msg: Optional[str] = None,
        *,
        latency: float = _NOT_GIVEN,
    ) -> ReasoningMetrics:
        latency_ms = _named("record_reasoning", {"latency_ms": latency_ms, "latency": latency})
        prompt_tokens = _named("record_reasoning", {"prompt_tokens": prompt_tokens})
        output_tokens = _named("record_reasoning", {"output_tokens": output_tokens})
        total = prompt_tokens + output_tokens
        metric = ReasoningMetrics(datetime.utcnow().isoformat(), latency_ms, prompt_tokens, output_tokens, total, temperature, status, error_msg)
        self._keep(self.reasoning_metrics, metric)
        rate = output_tokens / latency_ms * 1000 if latency_ms > 0 else None
        self._share("reasoning", status, latency_ms, prompt_tokens=prompt_tokens, output_tokens=output_tokens, tokens_per_second=rate)
        return metric

    def record_compression(
        self,
        latency_ms: float = _NOT_GIVEN,
        original_tokens: int = _NOT_GIVEN,
        compressed_tokens: int = _NOT_GIVEN,
        status: str = "success",
        error_msg: Optional[str] = None,
        *,
        latency: float = _NOT_GIVEN,
    ) -> CompressionMetrics:
        latency_ms = _named("record_compression", {"latency_ms": latency_ms, "latency": latency})
        original_tokens = _named("record_compression", {"original_tokens": original_tokens})
        compressed_tokens = _named("record_compression", {"compressed_tokens": compressed_tokens})
        ratio = compressed_tokens / original_tokens if original_tokens > 0 else 1.0
        metric = CompressionMetrics(datetime.utcnow().isoformat(), latency_ms, original_tokens, compressed_tokens, ratio, status, error_msg)
        self._keep(self.compression_metrics, metric)
        self._share(
            "compression", status, latency_ms, samples={"compression_ratio": ratio},
            totals={"tokens_saved": max(0, original_tokens - compressed_tokens)},
        )
        return metric

    def _share(self, kind: str, status: str, latency_ms: float, **figures: Any) -> None:
        """The record, in the shared metrics: a side channel, as the workers' own, so losing one never fails Athena's call."""
        try:
            self.store.record(RECORDED[kind], ok=status == "success", latency_ms=float(latency_ms), **figures)
        except Exception as exc:  # noqa: BLE001 - see above
            logger.warning("could not record a %s call in the shared metrics: %s: %s", kind, exc.__class__.__name__, exc)

    @property
    def store(self) -> MetricsStore:
        """Where `record_*` write: the reader itself when it can write, else a store over its Redis."""
        if isinstance(self.reader, MetricsStore):
            return self.reader
        return MetricsStore(self.reader._redis)

    # --- the shared figures ---

    def _stats(self, kind: str) -> KindStats:
        return self.reader.combined(kind, KINDS[kind], since=self._since)

    def get_embedding_stats(self) -> Dict:
        stats = self._stats("embedding")
        out = _outcome(stats)
        if out is None or not stats.success:
            return out or {}
        dimension = stats.samples.get("dimension")
        return {**out, "total_tokens_processed": stats.prompt_tokens, "avg_dimension": dimension.avg if dimension else None}

    def get_reasoning_stats(self) -> Dict:
        stats = self._stats("reasoning")
        out = _outcome(stats)
        if out is None or not stats.success:
            return out or {}
        return {
            **out,
            "total_prompt_tokens": stats.prompt_tokens,
            "total_output_tokens": stats.output_tokens,
            "avg_output_tokens": stats.output_tokens / stats.success,
            "avg_tokens_per_sec": stats.tokens_per_second or 0.0,
        }

    def get_compression_stats(self) -> Dict:
        stats = self._stats("compression")
        out = _outcome(stats)
        if out is None or not stats.success:
            return out or {}
        ratio = stats.samples.get("compression_ratio") or LatencyStats()
        saved = stats.totals.get("tokens_saved", 0.0)
        return {
            **{k: v for k, v in out.items() if k not in ("min_latency_ms", "max_latency_ms")},
            "avg_compression_ratio": ratio.avg,
            "min_compression_ratio": ratio.min,
            "max_compression_ratio": ratio.max,
            "total_tokens_saved": int(saved),
            "avg_tokens_saved_per_operation": saved / stats.success,
        }

    def get_all_stats(self) -> Dict:
        return {
            "embedding": self.get_embedding_stats(),
            "reasoning": self.get_reasoning_stats(),
            "compression": self.get_compression_stats(),
            "timestamp": datetime.utcnow().isoformat(),
        }

    def clear_history(self) -> None:
        """Forget this process's records, and count the shared figures from now on."""
        self.embedding_metrics.clear()
        self.reasoning_metrics.clear()
        self.compression_metrics.clear()
        self._since = self.reader.snapshot([kind for kinds in KINDS.values() for kind in kinds])
        logger.info("Cleared model performance metrics history")


_monitor: Optional[ModelPerformanceMonitor] = None


def get_monitor() -> ModelPerformanceMonitor:
    global _monitor
    if _monitor is None:
        _monitor = ModelPerformanceMonitor()
    return _monitor
