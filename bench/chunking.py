"""How close "chunk" and "truncate" land to the whole text's vector, on texts that fit.

Starts one embedding llama-server (the harness, one thread, the stack's
settings), samples --texts prose texts of 300 to 500 tokens (paragraphs of this
project's docs and of Python's standard-library docstrings, consecutive
paragraphs of one document joined until long enough), embeds each whole, then
cut as the `long_text` policies cut an over-long text (`workers/long_texts.py`),
with a forced small window: every window for "chunk" (their token-weighted mean
of unit vectors), the first window for "truncate". Prints the cosine of each
to the whole text's vector (min, p5, median, mean) per window size, and how
often the cut vector is still nearer its own text's whole vector than any other
text's; for scale, the cosines between any two different texts of the sample.

    .venv/bin/python -m bench.chunking [--texts 100] [--windows 64,128,256]
"""

from __future__ import annotations

import argparse
import inspect
import platform
import re
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

from athena_inference.config.settings import load_settings
from athena_inference.workers.long_texts import cut, pooled
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.ops.local_stack import Stack, local_stack_env
from athena_inference.workers.ops.provision import provision

ROOT = Path(__file__).resolve().parents[1]
MIN_TOKENS, MAX_TOKENS = 300, 500
COMMAND = ".venv/bin/python -m bench.chunking"


# --- the sample ---


STDLIB = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "email.message", "enum", "functools", "http.client", "itertools", "json", "logging", "os",
    "pathlib", "re", "shutil", "socket", "sqlite3", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "typing", "unittest", "urllib.request", "zipfile",
)


def documents() -> list[tuple[str, str]]:
    """(source, text) of every document the sample may draw from: each doc file, and
    each standard-library module's docstring followed by its public names' docstrings."""
    import importlib

    docs = [("docs", p.read_text()) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    seen: set[str] = set()
    for name in STDLIB:
        module = importlib.import_module(name)
        strings = [inspect.getdoc(module)] + [inspect.getdoc(getattr(module, n)) for n in sorted(dir(module)) if not n.startswith("_")]
        # Inherited and re-exported docstrings repeat; a text must count once.
        fresh = [s for s in dict.fromkeys(strings) if s and s not in seen]
        seen.update(fresh)
        docs.append(("stdlib", "\n\n".join(fresh)))
    return docs


def paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a document: no code, tables, headings or doctests."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or any(line.lstrip().startswith(("|", "#", ">>>", "...", "$ ")) for line in lines):
            continue
        if sum(line.startswith("    ") for line in lines) > len(lines) / 2:
            continue
        kept.append(" ".join(line.strip() for line in lines))
    return kept


def sample(server: LlamaServer, count: int) -> list[tuple[str, str]]:
    """Up to `count` (source, text) of MIN_TOKENS to MAX_TOKENS tokens, spread over every source."""
    tokens = lambda text: len(server.tokenize(text, add_special=False))  # noqa: E731
    found: list[tuple[str, str]] = []
    for source, document in documents():
        held: list[str] = []
        for paragraph in paragraphs(document):
            if tokens(paragraph) > MAX_TOKENS:
                held = []
                continue
            # Paragraphs join while they stay one text's worth; one that overflows starts the next.
            held = held + [paragraph] if tokens("\n\n".join(held + [paragraph])) <= MAX_TOKENS else [paragraph]
            if tokens("\n\n".join(held)) >= MIN_TOKENS:
                found.append((source, "\n\n".join(held)))
                held = []
    print(f"[bench] {len(found)} texts of {MIN_TOKENS}-{MAX_TOKENS} tokens found; {min(count, len(found))} drawn", flush=True)
    if len(found) <= count:
        return found
    # Evenly spaced, so every source keeps its share.
    return [found[int(i)] for i in np.linspace(0, len(found) - 1, count)]


# --- the measurement ---


def cosine(a: list[float], b: list[float]) -> float:
    a_, b_ = np.asarray(a), np.asarray(b)
    return float(a_ @ b_ / (np.linalg.norm(a_) * np.linalg.norm(b_)))


def cut_vector(server: LlamaServer, text: str, policy: str, limit: int, window: int) -> tuple[list[float], int]:
    """The text's vector as the policy would make it, cut at `window` tokens; and its windows."""
    windows = cut(server, text, policy, limit=limit, window=window)
    vectors = server.embed([w.text for w in windows]).vectors
    return pooled(vectors, [w.tokens for w in windows]), len(windows)


def summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {"min": array.min(), "p5": np.percentile(array, 5), "median": np.median(array), "mean": array.mean()}


def own_is_nearest(vectors: np.ndarray, whole: np.ndarray) -> float:
    """Share of texts whose cut vector is nearer its own whole vector than any other text's:
    what a search over the whole vectors would find first."""
    scores = _units(vectors) @ _units(whole).T
    return float(np.mean(scores.argmax(axis=1) == np.arange(len(vectors))))


def _units(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def measure(server: LlamaServer, texts: list[str], windows: list[int], limit: int) -> list[tuple]:
    whole = np.asarray([server.embed([text]).vectors[0] for text in texts])
    # The scale: how near any two different texts of the sample are.
    pairs = _units(whole) @ _units(whole).T
    others = pairs[np.triu_indices(len(texts), k=1)].tolist()
    rows = [("two different texts (scale)", "-", None, summary(others), None)]
    for policy in ("chunk", "truncate"):
        for window in windows:
            cut_vectors, pieces = [], []
            for text in texts:
                vector, n = cut_vector(server, text, policy, limit, window)
                cut_vectors.append(vector)
                pieces.append(n)
            cosines = [cosine(v, w) for v, w in zip(cut_vectors, whole, strict=True)]
            rows.append((policy, window, float(np.mean(pieces)), summary(cosines), own_is_nearest(np.asarray(cut_vectors), whole)))
            print(f"[bench] {policy} at {window} tokens: median {rows[-1][3]['median']:.4f}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=100, help="texts in the sample (at least 50 are wanted)")
    parser.add_argument("--windows", default="64,128,256", help="window sizes in tokens, comma-separated")
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")]

    settings = load_settings()
    provision(settings)
    env = local_stack_env(LLAMACPP_N_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="athena-bench-chunking-") as tmp:
        stack = Stack(Path(tmp), env)
        server = LlamaServer(env["LLAMACPP_EMBEDDINGS_URL"], timeout=httpx.Timeout(300.0))
        try:
            stack.llama("embeddings", env["LLAMACPP_EMBEDDINGS_URL"])
            drawn = sample(server, args.texts)
            if len(drawn) < 50:
                print(f"[bench] only {len(drawn)} texts of {MIN_TOKENS}-{MAX_TOKENS} tokens found; wanted 50", flush=True)
            texts = [text for _, text in drawn]
            lengths = [len(server.tokenize(text, add_special=False)) for text in texts]
            rows = measure(server, texts, windows, settings.embedding_max_tokens)
            model = server.health().model
        finally:
            server.close()
            stack.stop_all()

    sources = {source: sum(s == source for s, _ in drawn) for source in ("docs", "stdlib")}
    print(f"\n{len(texts)} texts ({sources['docs']} from this project's docs, {sources['stdlib']} from stdlib docstrings), "
          f"{min(lengths)}-{max(lengths)} tokens, median {int(np.median(lengths))}; model {model}; "
          f"Python {platform.python_version()}\n")
    print("| vector | window (tokens) | windows per text | min | p5 | median | mean | own text nearest |")
    print("|---|---|---|---|---|---|---|---|")
    for policy, window, pieces, s, nearest in rows:
        found = "-" if nearest is None else f"{nearest:.0%}"
        per_text = "-" if pieces is None else f"{pieces:.1f}"
        print(f"| {policy} | {window} | {per_text} | {s['min']:.4f} | {s['p5']:.4f} | {s['median']:.4f} | {s['mean']:.4f} | {found} |")
    print(f"\ncosine to the whole text's vector; command: {COMMAND} --texts {args.texts} --windows {args.windows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
