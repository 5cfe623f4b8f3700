"""Athena's own names, over the queues: switching Athena over means changing its imports.

    from athena.core.llm_client import LocalLLMClient, get_llm_client   ->  from athena_client.compat.llm_client import ...
    from athena.core.embeddings import EmbeddingModel                   ->  from athena_client.compat.embeddings import ...
    from athena.monitoring.model_metrics import get_monitor             ->  from athena_client.compat.model_metrics import ...

Each module keeps the names, signatures, defaults and result shapes of the
Athena module it replaces; docs/switching-athena.md says what behaves
differently, and why. Every name is also importable from `athena_client.compat`.
"""

from athena_client.compat.embeddings import EmbeddingModel, cosine_similarity
from athena_client.compat.llm_client import (
    CompressionResult,
    EmbeddingResult,
    LocalLLMClient,
    ReasoningResult,
    get_llm_client,
)
from athena_client.compat.model_metrics import (
    CompressionMetrics,
    EmbeddingMetrics,
    ModelPerformanceMonitor,
    ReasoningMetrics,
    get_monitor,
)

__all__ = [
    "CompressionMetrics",
    "CompressionResult",
    "EmbeddingMetrics",
    "EmbeddingModel",
    "EmbeddingResult",
    "LocalLLMClient",
    "ModelPerformanceMonitor",
    "ReasoningMetrics",
    "ReasoningResult",
    "get_llm_client",
    "cosine_similarity",
    "get_monitor",
]
