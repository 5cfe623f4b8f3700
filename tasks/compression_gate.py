"""Whether a consolidation compresses its events first: only where it pays.

Compression costs the compressor's time (and a hop through the compression
queue); it saves the reasoning server the prompt tokens it removes. Both
rates are measured on the stack itself and kept in the metrics as samples:
the compressor's time per 1,000 input characters (every run of 1,000
characters or more that was not a cache hit, from `athena.compress_prompt`
and the consolidation's own stage),
and the reasoning server's time per prompt token it had to read (every
generation). Characters, not tokens, for the compressor: its tokenizer need
not be the reasoning model's.
"""

from __future__ import annotations

import logging
import statistics
from typing import Literal, Optional, Union

from athena_client.contract.consolidation import CompressionGate
from athena_client.contract.payloads import PROMPT_MS_PER_TOKEN, ServerTiming
from athena_client.contract.routes import TaskName
from athena_inference.workers.metrics import MetricsSink

log = logging.getLogger(__name__)

COMPRESSOR_SAMPLE = "compressor_ms_per_kchar"
PROMPT_SAMPLE = PROMPT_MS_PER_TOKEN
COMPRESSOR_KINDS = (TaskName.COMPRESS_PROMPT.value, TaskName.CONSOLIDATE_COMPRESS.value)
PROMPT_KINDS = (TaskName.REASON.value, TaskName.CONSOLIDATE_REASON.value)
# The median of the last runs of each kind: recent enough to follow a model
# swap, many enough that one run on a busy machine does not swing it.
RECENT_RUNS = 20
# A short text's compression is mostly the model's fixed cost per call: its time
# per character would overstate a cluster's many times over (seen: 172 s
# expected for 20 events after one 80-character warm-up).
MIN_COMPRESSED_CHARS = 1000


def note_compressor_run(metrics: MetricsSink, kind: str, input_chars: int, elapsed_ms: float) -> None:
    """One compressor run's rate, for the gate; a side channel, never failing the task."""
    if input_chars < MIN_COMPRESSED_CHARS:
        return
    try:
        metrics.sample(kind, COMPRESSOR_SAMPLE, elapsed_ms * 1000 / input_chars)
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("could not record the compressor's rate for %s", kind, exc_info=True)


def note_prompt(metrics: MetricsSink, kind: str, timing: ServerTiming) -> None:
    """One generation's prompt rate at the reasoning server, for the gate: for a
    consolidation's stage, whose call is recorded as handed over, without a result.
    `athena.reason` carries it in its own record (`ReasoningResult.metric_samples`)."""
    rate = timing.prompt_ms_per_token()
    if rate is None:
        return
    try:
        metrics.sample(kind, PROMPT_SAMPLE, rate)
    except Exception:  # noqa: BLE001 - a side channel
        log.warning("could not record the prompt rate for %s", kind, exc_info=True)


def _median(metrics: MetricsSink, kinds: tuple[str, ...], sample: str) -> Optional[float]:
    values = [v for kind in kinds for v in metrics.recent(kind, sample, RECENT_RUNS)]
    return statistics.median(values) if values else None


def decide(
    asked: Union[bool, Literal["auto"]],
    *,
    event_chars: int,
    event_tokens: int,
    rate: float,
    metrics: MetricsSink,
) -> CompressionGate:
    """The gate's decision for events of `event_chars` characters (`event_tokens`
    reasoning tokens) compressed to `rate` of their tokens. A compressor that is
    not ready passes the events on whole in its stage (`ConsolidationResult.compressed`
    then says False); the gate runs where the compressor is not loaded."""
    figures = dict(asked=asked, event_chars=event_chars, event_tokens=event_tokens)
    if asked is False:
        return CompressionGate(compress=False, reason="compress=False: never compressed", **figures)
    per_kchar = _median(metrics, COMPRESSOR_KINDS, COMPRESSOR_SAMPLE)
    per_token = _median(metrics, PROMPT_KINDS, PROMPT_SAMPLE)
    expected = per_kchar * event_chars / 1000 if per_kchar is not None else None
    saved = per_token * event_tokens * (1 - rate) if per_token is not None else None
    figures.update(compressor_ms_per_kchar=per_kchar, prompt_ms_per_token=per_token, expected_compress_ms=expected, saved_prompt_ms=saved)
    if asked is True:
        return CompressionGate(compress=True, reason="compress=True: compressed as asked", **figures)
    if expected is None:
        return CompressionGate(compress=False, reason="no compressor runs measured on this stack yet, so no saving can be shown", **figures)
    if saved is None:
        return CompressionGate(compress=False, reason="no reasoning prompt timings on this stack yet, so no saving can be shown", **figures)
    if expected < saved:
        return CompressionGate(compress=True, reason=f"compressing takes about {expected:.0f} ms and saves about {saved:.0f} ms of prompt", **figures)
    return CompressionGate(compress=False, reason=f"compressing would take about {expected:.0f} ms to save about {saved:.0f} ms of prompt", **figures)
