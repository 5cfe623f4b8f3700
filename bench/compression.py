"""Compression latency and achieved ratio for contexts of about 500, 2,000 and 8,000 tokens.

Runs the compressor seam in this process, exactly as a compression worker does
(model loaded once, then one call per context, rate correction included), for
every method whose model is on disk. Contexts are prose: this project's docs,
an incident memory, and Python standard-library documentation, cut to size.

    .venv/bin/python -m bench.compression [--rate 0.5] [--runs 5,3,2]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

from athena_inference.config.settings import load_settings
from athena_inference.workers.compressor import Compressor
from athena_inference.workers.metrics import latency_stats

ROOT = Path(__file__).resolve().parents[1]
SIZES = (500, 2000, 8000)


def prose() -> str:
    import argparse as a  # noqa: E401
    import collections
    import json
    import logging
    import pathlib
    import subprocess
    import threading
    import unittest

    docs = [p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    stdlib = [inspect.getdoc(m) or "" for m in (a, collections, json, logging, pathlib, subprocess, threading, unittest)]
    stdlib += [inspect.getdoc(getattr(m, n)) or "" for m in (logging, subprocess, threading) for n in dir(m) if n[:1].isupper()]
    return "\n\n".join(docs + stdlib)


def context_of(text: str, tokens: int, count) -> str:
    words = text.split(" ")
    low, high = 1, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid])) <= tokens:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--runs", default="5,3,2", help="runs per size, for 500,2000,8000 tokens")
    args = parser.parse_args()
    runs = dict(zip(SIZES, (int(n) for n in args.runs.split(",")), strict=True))

    rows = []
    for method in ("llmlingua2", "perplexity"):
        settings = load_settings(compression_method=method)
        started = time.perf_counter()
        compressor = Compressor.load(settings)
        if not compressor.status.ready:
            print(f"[bench] {method}: not available ({compressor.status.reason})", flush=True)
            continue
        print(f"[bench] {method}: {compressor.status.model} loaded in {time.perf_counter() - started:.1f} s", flush=True)
        text = prose()
        for size in SIZES:
            context = context_of(text, size, compressor.count_tokens)
            latencies, ratios = [], []
            for _ in range(runs[size]):
                t = time.perf_counter()
                out = compressor.compress(context, rate=args.rate)
                latencies.append((time.perf_counter() - t) * 1000)
                ratios.append(out.compressed_tokens / out.original_tokens)
            lat = latency_stats(latencies)
            rows.append((method, compressor.status.model, out.original_tokens, runs[size], lat.p50, lat.p95, min(ratios), max(ratios)))
            print(f"[bench] {method} {out.original_tokens} tokens: p50 {lat.p50:.0f} ms", flush=True)

    print(f"\nrate asked {args.rate}; tokens counted with cl100k_base; CPU, torch threads = {_threads()}\n")
    print("| method | model | context tokens | runs | p50 ms | p95 ms | kept (min-max) | saved |")
    print("|---|---|---|---|---|---|---|---|")
    for method, model, tokens, n, p50, p95, lo, hi in rows:
        print(f"| {method} | {model} | {tokens} | {n} | {p50:,.0f} | {p95:,.0f} | {lo:.0%}-{hi:.0%} | {1 - hi:.0%}-{1 - lo:.0%} |")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
