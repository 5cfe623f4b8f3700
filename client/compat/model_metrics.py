"""`athena.monitoring.model_metrics`: Athena's performance monitor, reading the workers' shared metrics.

`get_embedding_stats()`, `get_reasoning_stats()`, `get_compression_stats()`
and `get_all_stats()` return Athena's dicts, with Athena's keys, computed from
the metrics every worker process records in Redis, so they cover every
process, not this one alone:

    embedding    athena.embed and athena.embed_batch
    reasoning    athena.reason
    compression  athena.compress_prompt

Counts and token sums cover every call since the figures were last reset;
latencies, dimensions and ratios the last ATHENA_METRICS_WINDOW calls.
`clear_history()` starts this monitor's figures afresh without wiping the
shared ones other readers see. `record_*` keep Athena's own records in this
process, as before (`embedding_metrics`, ...); they do not change the
workers' figures, which already count every call.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Dict, List, Optional

from athena_client.compat.connection import metrics_url
from athena_client.shared_redis.metrics import KindStats, LatencyStats, MetricsReader

logger = logging.getLogger(__name__)

KINDS = {
    "embedding": ["athena.embed", "athena.embed_batch"],
    "reasoning": ["athena.reason"],
    "compression": ["athena.compress_prompt"],
}


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
        self.reader = reader or MetricsReader.from_url(metrics_url())
        self.embedding_metrics: List[EmbeddingMetrics] = []
        self.reasoning_metrics: List[ReasoningMetrics] = []
        self.compression_metrics: List[CompressionMetrics] = []
        self._since: Optional[dict[str, dict[str, float]]] = None

    # --- Athena's own records, kept in this process ---

    def _keep(self, history: list, metric) -> None:
        history.append(metric)
        del history[: max(0, len(history) - self.max_history)]

    def record_embedding(
        self, latency_ms: float, dimension: int, tokens_processed: int, status: str = "success", error_msg: Optional[str] = None
    ) -> EmbeddingMetrics:
        metric = EmbeddingMetrics(datetime.utcnow().isoformat(), latency_ms, dimension, tokens_processed, status, error_msg)
        self._keep(self.embedding_metrics, metric)
        return metric

    def record_reasoning(
        self,
        latency_ms: float,
        prompt_tokens: int,
        output_tokens: int,
        temperature: float,
        status: str = "success",
        error_msg: Optional[str] = None,
    ) -> ReasoningMetrics:
        total = prompt_tokens + output_tokens
        metric = ReasoningMetrics(datetime.utcnow().isoformat(), latency_ms, prompt_tokens, output_tokens, total, temperature, status, error_msg)
        self._keep(self.reasoning_metrics, metric)
        return metric

    def record_compression(
        self, latency_ms: float, original_tokens: int, compressed_tokens: int, status: str = "success", error_msg: Optional[str] = None
    ) -> CompressionMetrics:
        ratio = compressed_tokens / original_tokens if original_tokens > 0 else 1.0
        metric = CompressionMetrics(datetime.utcnow().isoformat(), latency_ms, original_tokens, compressed_tokens, ratio, status, error_msg)
        self._keep(self.compression_metrics, metric)
        return metric

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
