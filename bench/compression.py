"""Compression: the consolidation case side by side for each selection, then latency by context size.

The consolidation case is what a consolidation's compression stage sends: the
20-event cluster of bench/consolidation.py as one text (about 1,000 cl100k
tokens), rate 0.5, every event id forced. A 360-token incident memory (the
integration tests' text, nothing forced) is the short case. For each way the
perplexity method can select tokens (ATHENA_COMPRESSION_SELECTION), in one run:

- p50 and p95 seconds per call (model loaded once, exactly as a worker does);
- the achieved rate, compressed / original cl100k tokens;
- forced kept: the share of the force-token occurrences still in the prompt;
- facts kept: the share of occurrences of the text's key facts (numbers,
  names, phrases listed below) still in the prompt, word for word;
- dates kept: the share of the events' dates (YYYY-MM-DD) still readable.

Word-for-word survival is a floor on what a reader can still recover. With
--answers URL, a reasoning llama-server at URL (the stack's reasoning server)
also answers each case's ten questions over the original text and over each
compressed one; "answered" is the share whose reply contains the expected
answer. Then it times prose contexts of about 500, 2,000 and 8,000 tokens for
every method whose model is on disk (the configured selection).

    .venv/bin/python -m bench.compression [--rate 0.5] [--case-runs 5] [--selections one_pass,iterative] [--runs 5,3,2] [--answers http://127.0.0.1:8002]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from athena_inference.config.settings import load_settings
from athena_inference.tasks.consolidation.prompt import render_event
from athena_inference.workers.compressor import Compressor
from athena_inference.workers.metrics import latency_stats
from athena_inference.workers.ops.sample_payloads import INCIDENT_MEMORY as MEMORY

from bench.consolidation import cluster_of_20

ROOT = Path(__file__).resolve().parents[1]
SIZES = (500, 2000, 8000)
# What a reader of each text needs to keep, word for word.
EVENT_FACTS = (
    "reconciliation", "three days", "SFTP", "host key", "non-zero", "on-call", "pinned", "a week ahead",
    "backfill", "214", "mismatches", "silent failure", "key rotation", "row count", "metrics store",
    "dashboard", "invoice exporter", "currency-rate importer", "standup", "zero rows",
)
# Questions over each text, each with the answers that count as right (any of them, case ignored).
EVENT_QUESTIONS = (
    ("How many mismatches did the backfill script find?", ("214",)),
    ("Whose host key did the bank rotate?", ("SFTP",)),
    ("Where are host keys pinned now?", ("configuration",)),
    ("How long ahead are key rotations announced?", ("week",)),
    ("What must a batch job do on any exception?", ("non-zero", "page")),
    ("Where does every batch job report its processed row count?", ("metrics",)),
    ("What was the real defect, according to the retrospective?", ("silent",)),
    ("Which jobs were changed to stop swallowing exceptions?", ("invoice", "currency")),
    ("When does on-call check the batch dashboard?", ("morning", "standup")),
    ("For how many days did the reconciliation job fail silently?", ("three", "3")),
)
MEMORY_QUESTIONS = (
    ("How many mismatches did the backfill script find?", ("214",)),
    ("Who traced the problem?", ("Maria",)),
    ("Where does the job read settlement files from?", ("SFTP",)),
    ("Which database holds the ledger?", ("PostgreSQL",)),
    ("On which day did the bank rotate its host key?", ("Friday",)),
    ("Who wrote the backfill script?", ("Dev",)),
    ("What had the job's run time dropped to?", ("four seconds", "4 seconds")),
    ("After how many hours without a settlement file does the freshness check alert?", ("twenty-six", "26")),
    ("On which day will Maria present the incident?", ("Thursday",)),
    ("Which other jobs swallowed exceptions?", ("invoice", "currency")),
)
MEMORY_FACTS = (
    "Monday", "three days", "SFTP", "PostgreSQL", "Friday", "debug level", "Maria", "twelve minutes",
    "four seconds", "non-zero", "on-call", "a week ahead", "twenty-six hours", "Dev", "214", "refunds",
    "Saturday", "Tuesday", "invoice exporter", "currency-rate importer", "Thursday", "onboarding guide",
)


@dataclass(frozen=True)
class Case:
    name: str
    context: str
    facts: tuple[str, ...]
    questions: tuple[tuple[str, tuple[str, ...]], ...]
    force_tokens: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    case: str
    selection: str
    original_tokens: int
    runs: int
    p50_s: float
    p95_s: float
    rate: float
    forced_kept: Optional[float]
    facts_kept: float
    dates_kept: Optional[float]
    prompt: str


def cases() -> list[Case]:
    events = cluster_of_20()
    return [
        Case(
            "20 events (consolidation)",
            "\n".join(render_event(e) for e in events),
            EVENT_FACTS,
            EVENT_QUESTIONS,
            force_tokens=tuple(f"[{e.id}]" for e in events),
            dates=tuple(e.timestamp.date().isoformat() for e in events),
        ),
        Case("incident memory", MEMORY, MEMORY_FACTS, MEMORY_QUESTIONS),
    ]


def kept_share(needles: tuple[str, ...], original: str, compressed: str) -> Optional[float]:
    """Occurrences of `needles` in `compressed`, at most as many as in `original`, over those in `original`."""
    wanted = [original.lower().count(n.lower()) for n in needles]
    if not sum(wanted):
        return None
    got = [min(compressed.lower().count(n.lower()), w) for n, w in zip(needles, wanted)]
    return sum(got) / sum(wanted)


def measure(compressor: Compressor, case: Case, selection: str, rate: float, runs: int) -> Row:
    seconds, outs = [], []
    for _ in range(runs):
        started = time.perf_counter()
        outs.append(compressor.compress(case.context, rate=rate, force_tokens=list(case.force_tokens)))
        seconds.append(time.perf_counter() - started)
    out = outs[len(outs) // 2]
    lat = latency_stats(seconds)
    return Row(
        case.name, selection, out.original_tokens, runs, lat.p50, lat.p95,
        out.compressed_tokens / out.original_tokens,
        kept_share(case.force_tokens, case.context, out.prompt),
        kept_share(case.facts, case.context, out.prompt) or 0.0,
        kept_share(case.dates, case.context, out.prompt),
        out.prompt,
    )


def answered(server_url: str, text: str, questions: tuple[tuple[str, tuple[str, ...]], ...]) -> float:
    """The share of `questions` the reasoning server answers right from `text` alone."""
    import httpx

    from athena_inference.workers.llama_server import LlamaServer

    server = LlamaServer(server_url, timeout=httpx.Timeout(300))
    try:
        right = 0
        for question, answers in questions:
            reply = server.chat(
                [
                    {"role": "system", "content": "Answer the question from the text alone, in a few words."},
                    {"role": "user", "content": f"Text:\n{text}\n\nQuestion: {question}"},
                ],
                max_tokens=32, temperature=0.0, top_p=1.0, stop=[],
            ).text
            right += any(a.lower() in reply.lower() for a in answers)
        return right / len(questions)
    finally:
        server.close()


def side_by_side(selections: list[str], rate: float, runs: int) -> list[Row]:
    rows = []
    for selection in selections:
        compressor = loaded(load_settings(compression_method="perplexity", compression_selection=selection))
        if compressor is None:
            continue
        # The first call pays for allocations and thread start-up, which a worker pays once.
        compressor.compress(MEMORY, rate=rate)
        for case in cases():
            # LLMLingua's own loop takes tens of seconds a call: fewer runs keep the bench short.
            n = runs if selection == "one_pass" else max(1, (runs + 1) // 2)
            row = measure(compressor, case, selection, rate, n)
            rows.append(row)
            print(f"[bench] {selection} {case.name}: p50 {row.p50_s:.2f} s, kept {row.rate:.0%}", flush=True)
    return rows


def loaded(settings) -> Optional[Compressor]:
    started = time.perf_counter()
    compressor = Compressor.load(settings)
    if not compressor.status.ready:
        print(f"[bench] {settings.compression_method}: not available ({compressor.status.reason})", flush=True)
        return None
    print(f"[bench] {compressor.status.method}: {compressor.status.model} loaded in {time.perf_counter() - started:.1f} s", flush=True)
    return compressor


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


def context_of(text: str, tokens: int, count: Callable[[str], int]) -> str:
    words = text.split(" ")
    low, high = 1, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid])) <= tokens:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low])


def by_size(rate: float, runs_per_size: dict[int, int]) -> list[tuple]:
    rows = []
    for method in ("llmlingua2", "perplexity"):
        compressor = loaded(load_settings(compression_method=method))
        if compressor is None:
            continue
        text = prose()
        for size in (s for s in SIZES if runs_per_size[s]):
            context = context_of(text, size, compressor.count_tokens)
            latencies, ratios = [], []
            for _ in range(runs_per_size[size]):
                t = time.perf_counter()
                out = compressor.compress(context, rate=rate)
                latencies.append(time.perf_counter() - t)
                ratios.append(out.compressed_tokens / out.original_tokens)
            lat = latency_stats(latencies)
            rows.append((method, compressor.selection, out.original_tokens, runs_per_size[size], lat.p50, lat.p95, min(ratios), max(ratios)))
            print(f"[bench] {method} {out.original_tokens} tokens: p50 {lat.p50:.1f} s", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--case-runs", type=int, default=5, help="runs per case with one_pass (iterative runs half as many)")
    parser.add_argument("--selections", default="one_pass,iterative")
    parser.add_argument("--runs", default="5,3,2", help="runs per prose size, for 500,2000,8000 tokens (0,0,0 skips them)")
    parser.add_argument("--answers", default="", help="URL of a reasoning llama-server that answers questions over each text")
    args = parser.parse_args()

    rows = side_by_side([s for s in args.selections.split(",") if s], args.rate, args.case_runs)
    print(f"\nrate asked {args.rate}; tokens counted with cl100k_base; CPU, torch threads = {_threads()}, load average {_load()}\n")
    print("| case | selection | tokens | runs | p50 s | p95 s | kept | forced kept | facts kept | dates kept |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.case} | {r.selection} | {r.original_tokens:,} | {r.runs} | {r.p50_s:.2f} | {r.p95_s:.2f} | {r.rate:.1%} "
            f"| {_share(r.forced_kept)} | {_share(r.facts_kept)} | {_share(r.dates_kept)} |"
        )
    if args.answers:
        print("\n| case | text | answered |")
        print("|---|---|---|")
        for case in cases():
            print(f"| {case.name} | original | {answered(args.answers, case.context, case.questions):.0%} |", flush=True)
            for r in (r for r in rows if r.case == case.name):
                print(f"| {case.name} | {r.selection}, kept {r.rate:.0%} | {answered(args.answers, r.prompt, case.questions):.0%} |", flush=True)
    runs = dict(zip(SIZES, (int(n) for n in args.runs.split(",")), strict=True))
    if any(runs.values()):
        sized = by_size(args.rate, runs)
        print("\n| method | selection | context tokens | runs | p50 s | p95 s | kept (min-max) |")
        print("|---|---|---|---|---|---|---|")
        for method, selection, tokens, n, p50, p95, lo, hi in sized:
            print(f"| {method} | {selection} | {tokens:,} | {n} | {p50:.1f} | {p95:.1f} | {lo:.0%}-{hi:.0%} |")
    return 0


def _share(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0%}"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _load() -> str:
    import os

    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
