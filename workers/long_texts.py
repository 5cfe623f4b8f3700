"""Texts longer than the embedding server takes in one input: refuse, truncate or chunk.

One implementation for every embedding task. The batch goes to the server
whole, in one request, as before; only when the server refuses it (the seam's
`InputTooLong` names the over-long texts and carries the server's limit) are
those texts cut, by the request's `LongTextPolicy`:

- "fail": the refusal stands.
- "truncate": the text's first window of tokens, embedded as one input.
- "chunk": the text in consecutive windows, each embedded; its vector is the
  token-weighted mean of the windows' unit vectors, made a unit vector again.

A window is cut from the text's tokens (without the special tokens the server
adds to every input), turned back into text by the server's own tokenizer
(`/detokenize`), and re-tokenized to check it fits: a tokenizer need not give
back the same tokens for its own output. The model's prefix for the request's
purpose (`search_document: ` for nomic) goes before every input the server
gets, each window of a cut text included, and a window leaves room for it. A window that does not fit is made
shorter, a bounded number of times. The windows then go to the server together
with the batch's other texts, in one request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from athena_client.contract.errors import InputTooLong
from athena_client.contract.payloads import LongTextPolicy, ServerTiming, VectorNote, text_problem
from athena_inference.workers.llama_server import Embeddings, LlamaServer

log = logging.getLogger(__name__)

# How often one window may be made shorter before its text is refused: each
# try drops at least the excess, so a tokenizer that round-trips within a few
# tokens needs one; a pathological one must not keep a worker busy.
MAX_SHRINKS = 8
# Any text serves to count the special tokens the server adds to every input.
_PROBE = "a"

Embed = Callable[[list[str]], Embeddings]


@dataclass(frozen=True)
class Window:
    text: str
    # Tokens of the original text this window covers: its weight in the mean.
    tokens: int


@dataclass(frozen=True)
class Vectors:
    """A batch's vectors in input order, and how each was made (None: from the whole text)."""

    vectors: list[list[float]]
    notes: list[Optional[VectorNote]]
    model: str
    # The request that made the vectors; a refused first try shows in the task's run time.
    timing: ServerTiming


def embed_texts(server: LlamaServer, texts: list[str], policy: LongTextPolicy, embed: Embed, prefix: str = "") -> Vectors:
    """`texts`, each after `prefix`, embedded by `embed` in one request, or two
    when some are too long and the policy cuts them.

    Raises `InputTooLong` naming positions in `texts`: under "fail" the
    server's refusal; otherwise the texts that could not be cut to fit.
    """
    send: Embed = (lambda inputs: embed([prefix + text for text in inputs])) if prefix else embed
    try:
        out = send(texts)
    except InputTooLong as refused:
        if policy == "fail" or not refused.positions:
            raise
        return _embed_cut(server, texts, policy, send, refused, prefix)
    return Vectors(out.vectors, [None] * len(texts), out.model, out.timing)


def cut(
    server: LlamaServer,
    text: str,
    policy: LongTextPolicy,
    *,
    limit: int,
    window: Optional[int] = None,
    prefix: str = "",
) -> list[Window]:
    """`text` as windows that each fit `limit` tokens as one input after `prefix`:
    the first only for "truncate", all of them for "chunk". `window` is the
    tokens to cut at (default: as many as fit beside the special tokens and the
    prefix); a parameter so that a measurement can force small windows."""
    size = window if window is not None else limit - added_tokens(server, prefix)
    if size < 1:
        raise InputTooLong(
            f"the server's special tokens and the prefix {prefix!r} leave no room for text under its limit of {limit} tokens"
        )
    tokens = server.tokenize(text, add_special=False)
    windows: list[Window] = []
    start = 0
    while start < len(tokens) and not (policy == "truncate" and windows):
        piece = _fitting(server, tokens[start : start + size], limit, prefix)
        start += piece.tokens
        # A window that reads as nothing (control tokens, bare whitespace) would be refused as blank.
        if text_problem(piece.text) is None:
            windows.append(piece)
    if not windows:
        raise InputTooLong("no window of the text reads as anything once detokenized")
    return windows


def pooled(vectors: list[list[float]], weights: list[int]) -> list[float]:
    """The weighted mean of the vectors made unit length, made unit length again:
    each window counts by its tokens, not by how long the model made its vector."""
    matrix = np.asarray(vectors, dtype=np.float64)
    units = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    mean = np.asarray(weights, dtype=np.float64) @ units
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).tolist()


def added_tokens(server: LlamaServer, prefix: str = "") -> int:
    """How many tokens the server's special tokens (BOS/CLS, EOS/SEP) and `prefix`
    add to each input. Asked each time rather than kept: the server behind a URL
    may change model."""
    return len(server.tokenize(prefix + _PROBE, add_special=True)) - len(server.tokenize(_PROBE, add_special=False))


# --- the cut path ---


def _embed_cut(
    server: LlamaServer, texts: list[str], policy: LongTextPolicy, embed: Embed, refused: InputTooLong, prefix: str
) -> Vectors:
    limit = refused.limit
    if limit is None:
        raise _too_long(refused.positions, "the server did not state its limit in tokens, so it cannot be cut to fit")
    windows = _cut_all(server, texts, refused.positions, policy, limit, prefix)
    inputs, owners = _inputs(texts, windows)
    try:
        out = embed(inputs)
    except InputTooLong as again:
        # Every window was checked against the limit; a refusal now means the
        # server counts differently. Name the texts, not the windows, and stop.
        culprits = sorted({owners[p] for p in again.positions} or set(windows))
        raise _too_long(culprits, f"the server refused a window cut to fit its limit of {limit} tokens") from None
    by_text: dict[int, list[list[float]]] = {}
    for owner, vector in zip(owners, out.vectors, strict=True):
        by_text.setdefault(owner, []).append(vector)
    note: VectorNote = "truncated" if policy == "truncate" else "chunked"
    vectors = [
        pooled(by_text[i], [w.tokens for w in windows[i]]) if i in windows else by_text[i][0] for i in range(len(texts))
    ]
    notes: list[Optional[VectorNote]] = [note if i in windows else None for i in range(len(texts))]
    return Vectors(vectors, notes, out.model, out.timing)


def _cut_all(
    server: LlamaServer, texts: list[str], positions: tuple[int, ...], policy: LongTextPolicy, limit: int, prefix: str
) -> dict[int, list[Window]]:
    """Each refused text's windows; every text that cannot be cut is named in one error."""
    room = limit - added_tokens(server, prefix)
    windows: dict[int, list[Window]] = {}
    failed: list[int] = []
    for p in positions:
        try:
            windows[p] = cut(server, texts[p], policy, limit=limit, window=room, prefix=prefix)
        except InputTooLong as exc:
            log.warning("text at position %d cannot be cut to fit %d tokens: %s", p, limit, exc)
            failed.append(p)
    if failed:
        raise _too_long(failed, f"it could not be cut into windows of at most {limit} tokens")
    return windows


def _inputs(texts: list[str], windows: dict[int, list[Window]]) -> tuple[list[str], list[int]]:
    """One request's inputs: whole texts and windows in text order, with the text each came from."""
    inputs: list[str] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
        pieces = [w.text for w in windows[i]] if i in windows else [text]
        inputs += pieces
        owners += [i] * len(pieces)
    return inputs, owners


def _fitting(server: LlamaServer, tokens: list[int], limit: int, prefix: str = "") -> Window:
    """`tokens`, or a head of them made shorter at most MAX_SHRINKS times, whose
    text re-tokenizes within `limit` after `prefix`."""
    size = len(tokens)
    for _ in range(MAX_SHRINKS):
        text = server.detokenize(tokens[:size])
        counted = len(server.tokenize(prefix + text, add_special=True))
        if counted <= limit:
            return Window(text, size)
        # Drop at least the excess, and at least an eighth, so the tries stay few.
        size -= max(counted - limit, size // 8)
        if size < 1:
            break
    raise InputTooLong(f"a window of {len(tokens)} tokens did not re-tokenize within {limit} tokens, even made shorter")


def _too_long(positions, why: str) -> InputTooLong:
    positions = tuple(positions)
    return InputTooLong(
        f"texts at positions {list(positions)} have more tokens than the embedding server takes in one input, "
        f"and {why}",
        positions=positions,
    )
