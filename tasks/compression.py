"""The `compression` queue: LLMLingua prompt compression, its model loaded once per worker process."""

from __future__ import annotations

import time

from athena_client.contract.payloads import CompressionResult, CompressorStatus, CompressRequest, NoArguments
from athena_client.contract.routes import TaskName
from athena_inference.config.celery import app
from athena_inference.config.settings import get_settings
from athena_inference.tasks import compression_gate, seams
from athena_inference.tasks.base import AthenaTask, task_timing
from athena_inference.workers.compressor import TOKENIZER, Compression, Compressor, join_prompt


@app.task(name=TaskName.COMPRESS_PROMPT.value, base=AthenaTask)
def compress_prompt(request: CompressRequest) -> CompressionResult:
    """Context to a shorter prompt; the original, marked uncompressed, when compression is unavailable."""
    # Athena's `latency_ms` is the compression's own time, not the task's run (that is `timing.run_ms`).
    started = time.perf_counter()
    compressor = seams.compressor()
    status = compressor.status
    out, hit = _compressed(compressor, request) if status.ready else (_uncompressed(compressor, request), False)
    if status.ready and not hit:
        chars = len(request.context) + len(request.instruction) + len(request.question)
        compression_gate.note_compressor_run(seams.metrics(), TaskName.COMPRESS_PROMPT.value, chars, (time.perf_counter() - started) * 1000)
    saved = out.original_tokens - out.compressed_tokens
    return CompressionResult(
        compressed_prompt=out.prompt,
        compressed=status.ready,
        reason=status.reason,
        original_tokens=out.original_tokens,
        compressed_tokens=out.compressed_tokens,
        ratio=out.compressed_tokens / max(out.original_tokens, 1),
        rate_requested=request.effective_rate,
        target_tokens=request.target_tokens,
        method=status.method,
        model=status.model,
        tokenizer=TOKENIZER,
        cache_hit=hit,
        latency_ms=(time.perf_counter() - started) * 1000,
        tokens_saved=saved,
        money_saved_usd=saved * get_settings().compression_price_per_million_usd / 1e6,
        timing=task_timing(status.model or "none"),
    )


@app.task(name=TaskName.COMPRESSOR_STATUS.value, base=AthenaTask)
def compressor_status(request: NoArguments) -> CompressorStatus:
    """Whether this worker's compressor is ready, and if not, why."""
    return seams.compressor().status


def _compressed(compressor: Compressor, request: CompressRequest) -> tuple[Compression, bool]:
    """The compressed prompt, and whether it came from the cache (an identical request answered before)."""
    cache = seams.compression_cache()
    # The selection is part of the key: a switch must not serve the other one's answers.
    key = cache.key(request, compressor.variant, compressor.status.model)
    cached = cache.get(key)
    if cached is not None:
        return cached, True
    out = compressor.compress(
        request.context,
        instruction=request.instruction,
        question=request.question,
        rate=request.effective_rate,
        target_tokens=request.target_tokens,
        force_tokens=list(request.force_tokens),
    )
    cache.put(key, out)
    return out, False


def _uncompressed(compressor: Compressor, request: CompressRequest) -> Compression:
    """The whole prompt, its tokens counted as the paid API counts them."""
    prompt = join_prompt(request.instruction, request.context, request.question)
    tokens = compressor.count_tokens(prompt)
    return Compression(prompt=prompt, original_tokens=tokens, compressed_tokens=tokens)
