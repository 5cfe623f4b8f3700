"""Long generations under control: interactive reasoning behind a consolidation
backlog, cancel to a free slot, and the first streamed piece, each beside its peer.

Starts its own redis-server and one reasoning llama-server (one slot, one
thread: `LLAMACPP_N_THREADS`, default 1), then measures:

  interactive  `reason` (32 tokens, one at a time) idle, then behind a backlog of
               consolidations, in two layouts:
                 separate  the stack's: interactive `reasoning` and consolidation's
                           reasoning stage on `reasoning_background`, a worker each;
                 shared    the layout before: interactive `reason` sent to the queue
                           that holds consolidation's reasoning stage, one FIFO list
                           and one worker in front of the slot.
               Target: loaded p95 <= 1.5x idle p95 + one answer's time (the
               longest reasoning stage of the backlog).
  cancel       an endless generation cancelled once the slot decodes; the time
               from the cancel call to /slots showing the slot idle, and whether
               its decoded-token count still grows 300 ms later. Target p95 <= 250 ms.
  first piece  time from the call to the first piece: `reason_stream` through the
               queue against a streamed request straight to the same server; and
               from the worker writing the piece (as the server's token reached
               it) to the caller holding it. Target: within 50 ms.
  unstreamed   a 64-token answer straight from the server, streamed (as the
               worker now asks for it) against not: what streaming costs a call
               that does not stream.

    .venv/bin/python -m bench.generation [--backlog 4] [--interactive 12] [--cancels 20] [--firsts 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import httpx

from athena_client.contract.consolidation import ConsolidateOptions, ConsolidateRequest, EpisodicEvent
from athena_client.contract.payloads import ReasonRequest
from athena_client.contract.routes import Queue, TaskName
from athena_client.sender import TaskSender
from athena_inference.config.settings import load_settings
from athena_inference.workers.metrics import latency_stats
from athena_inference.workers.ops.local_stack import Stack, endless_generation, local_stack_env, redis_port, wait_for
from athena_inference.workers.ops.processes import worker_argv
from athena_inference.workers.ops.provision import provision
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS
from bench.output import emit

QUESTION = "In one sentence: why keep a backlog in a queue rather than in the server?"
CHAT = [{"role": "user", "content": QUESTION}]


def consolidation_request(n: int) -> ConsolidateRequest:
    start = datetime(2026, 11, 10, 9, 0, tzinfo=timezone.utc)
    events = [
        EpisodicEvent(id=f"b{n}-{i}", timestamp=start + timedelta(minutes=i), event_type=e.event_type, content=e.content, tags=e.tags)
        for i, e in enumerate(INCIDENT_EVENTS)
    ]
    # Greedy, so that every consolidation of the backlog is the same length of work.
    return ConsolidateRequest(events=events, options=ConsolidateOptions(max_patterns=3, temperature=0.0))


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def interactive(sender: TaskSender, count: int, queue: str) -> list[float]:
    ask = ReasonRequest(prompt=QUESTION, max_tokens=32, temperature=0.0)
    return [timed(lambda: sender.result(TaskName.REASON, sender.submit(TaskName.REASON, ask, queue=queue), 900)) for _ in range(count)]


def run_layout(stack: Stack, sender: TaskSender, layout: str, args, settings) -> dict:
    if layout == "separate":
        queue = Queue.REASONING.value
        lanes = (Queue.REASONING, Queue.REASONING_BACKGROUND, Queue.CONSOLIDATION)
    else:
        # A worker of one queue does not mix it with another's (a worker of several polls them in turn).
        queue = Queue.REASONING_BACKGROUND.value
        lanes = (Queue.REASONING_BACKGROUND, Queue.CONSOLIDATION)
    workers = [stack.start(f"bench-{layout}-{q.value}", worker_argv(q, settings, node_suffix=layout)) for q in lanes]
    names = {f"{q.value}@{layout}" for q in lanes}
    stack.wait_for_workers(sender, names)
    interactive(sender, 2, queue)  # warm: the worker processes, the server's prompt cache
    idle = interactive(sender, args.interactive, queue)
    backlog = [sender.submit(TaskName.CONSOLIDATE, consolidation_request(n)) for n in range(args.backlog)]
    time.sleep(1.0)
    loaded = interactive(sender, args.interactive, queue)
    answers = [sender.result(TaskName.CONSOLIDATE, task_id, timeout=3600) for task_id in backlog]
    for worker in workers:
        worker.stop()
    stages = [stage.run_ms for answer in answers for stage in answer.stages if stage.stage in ("reasoning", "repair")]
    answer_ms = max(stages)
    idle_stats, loaded_stats = latency_stats(idle), latency_stats(loaded)
    bound = 1.5 * idle_stats.p95 + answer_ms
    return {
        "layout": layout, "idle_p50": idle_stats.p50, "idle_p95": idle_stats.p95, "loaded_p50": loaded_stats.p50,
        "loaded_p95": loaded_stats.p95, "loaded_max": loaded_stats.max, "answer_ms": answer_ms, "stages_ms": stages,
        "bound_ms": bound, "met": loaded_stats.p95 <= bound,
    }


def slot(url: str) -> dict:
    return httpx.get(f"{url}/slots", timeout=5).json()[0]


def cancels(stack: Stack, sender: TaskSender, url: str, count: int, settings) -> dict:
    worker = stack.start("bench-cancel-reasoning", worker_argv(Queue.REASONING, settings, node_suffix="cancel"))
    stack.wait_for_workers(sender, {"reasoning@cancel"})
    freed, still = [], 0
    for i in range(count):
        task_id = sender.submit(TaskName.REASON, endless_generation(f"Write about lighthouse number {i}."))
        wait_for(lambda: slot(url)["is_processing"] and slot(url)["next_token"][0]["n_decoded"] >= 10, "generating", 120)
        started = time.perf_counter()
        sender.cancel(task_id)
        while slot(url)["is_processing"]:
            time.sleep(0.002)
        freed.append((time.perf_counter() - started) * 1000)
        decoded = slot(url)["next_token"][0]["n_decoded"]
        time.sleep(0.3)
        still += slot(url)["next_token"][0]["n_decoded"] == decoded
    worker.stop()
    stats = latency_stats(freed)
    return {"count": count, "p50_ms": stats.p50, "p95_ms": stats.p95, "max_ms": stats.max, "stopped_decoding": still}


def direct_first_token_ms(http: httpx.Client, url: str) -> float:
    payload = {"messages": CHAT, "max_tokens": 16, "temperature": 0.0, "top_p": 0.9, "stream": True}
    started = time.perf_counter()
    with http.stream("POST", f"{url}/v1/chat/completions", json=payload) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                first = (time.perf_counter() - started) * 1000
                break
        else:
            raise RuntimeError("the server streamed no content")
    return first


def queued_first_piece_ms(sender: TaskSender) -> tuple[float, float]:
    """From the call to the first piece; and from the worker writing it (its stream
    entry id is Redis's clock, this host's) to the caller holding it."""
    started = time.perf_counter()
    stream = sender.reason_stream(QUESTION, max_tokens=16, temperature=0.0)
    pieces = iter(stream)
    next(pieces)
    first = (time.perf_counter() - started) * 1000
    lag = time.time() * 1000 - int(stream.last_id.split("-")[0])
    list(pieces)
    return first, lag


def first_pieces(stack: Stack, sender: TaskSender, url: str, count: int, settings) -> dict:
    worker = stack.start("bench-first-reasoning", worker_argv(Queue.REASONING, settings, node_suffix="first"))
    stack.wait_for_workers(sender, {"reasoning@first"})
    queued_first_piece_ms(sender)
    direct, queued, lags = [], [], []
    # A kept-alive connection, as the worker's own.
    with httpx.Client(timeout=120) as http:
        direct_first_token_ms(http, url)
        for _ in range(count):
            direct.append(direct_first_token_ms(http, url))
            first, lag = queued_first_piece_ms(sender)
            queued.append(first)
            lags.append(lag)
    worker.stop()
    d, q, g = latency_stats(direct), latency_stats(queued), latency_stats(lags)
    return {
        "direct_p50": d.p50, "direct_p95": d.p95, "queued_p50": q.p50, "queued_p95": q.p95, "later_p50": q.p50 - d.p50,
        "lag_p50": g.p50, "lag_p95": g.p95,
    }


def unstreamed(url: str, count: int) -> dict:
    def ask(stream: bool) -> float:
        payload = {"messages": CHAT, "max_tokens": 64, "temperature": 0.0, "stream": stream, "ignore_eos": True}
        started = time.perf_counter()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=120) as response:
            response.read()
        return (time.perf_counter() - started) * 1000

    ask(False)
    plain, streamed = [], []
    for _ in range(count):
        plain.append(ask(False))
        streamed.append(ask(True))
    return {"plain_p50": latency_stats(plain).p50, "streamed_p50": latency_stats(streamed).p50}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=4, help="consolidations queued before the loaded phase")
    parser.add_argument("--interactive", type=int, default=12, help="interactive reasons per phase")
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--firsts", type=int, default=12, help="first-piece measurements per path")
    parser.add_argument("--layouts", default="separate,shared")
    parser.add_argument("--phases", default="interactive,cancel,first", help="comma-separated: interactive, cancel, first")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    env = local_stack_env(LLAMACPP_N_THREADS=os.environ.get("LLAMACPP_N_THREADS", "1"), ATHENA_REASONING_SLOTS="1")
    os.environ.update(env)
    settings = load_settings()
    provision(settings)
    stack = Stack(Path(tempfile.mkdtemp(prefix="athena-bench-")), env)
    url = env["LLAMACPP_REASONING_URL"]
    rows: dict = {}
    try:
        stack.redis(redis_port(env))
        stack.llama("reasoning", url)
        sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
        phases = args.phases.split(",")
        rows["layouts"] = []
        for layout in args.layouts.split(",") if "interactive" in phases else []:
            print(f"[bench] interactive behind {args.backlog} consolidations, layout {layout} ...", flush=True)
            rows["layouts"].append(run_layout(stack, sender, layout, args, settings))
        if "cancel" in phases:
            print("[bench] cancel ...", flush=True)
            rows["cancel"] = cancels(stack, sender, url, args.cancels, settings)
        if "first" in phases:
            print("[bench] first piece ...", flush=True)
            rows["first"] = first_pieces(stack, sender, url, args.firsts, settings)
            rows["unstreamed"] = unstreamed(url, args.firsts)
        sender.close()
    finally:
        stack.stop_all()

    lines = []
    if rows["layouts"]:
        lines += [
            f"\ninteractive `reason` (32 tokens), call to result, ms; backlog {args.backlog} consolidations, "
            f"one-slot server, {settings.n_threads} thread(s)\n",
            "| layout | idle p50 | idle p95 | loaded p50 | loaded p95 | loaded max | one answer (longest stage) "
            "| bound 1.5x idle p95 + answer | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows["layouts"]:
        lines.append(
            f"| {r['layout']} | {r['idle_p50']:.0f} | {r['idle_p95']:.0f} | {r['loaded_p50']:.0f} | {r['loaded_p95']:.0f} | {r['loaded_max']:.0f} "
            f"| {r['answer_ms']:.0f} | {r['bound_ms']:.0f} | {'yes' if r['met'] else 'no'} |"
        )
    if "cancel" in rows:
        c = rows["cancel"]
        lines.append(
            f"\ncancel to slot free ({c['count']} generations): p50 {c['p50_ms']:.0f} ms, p95 {c['p95_ms']:.0f} ms, "
            f"max {c['max_ms']:.0f} ms; decoding had stopped in {c['stopped_decoding']} of {c['count']}"
        )
    if "first" in rows:
        f, u = rows["first"], rows["unstreamed"]
        lines += [
            f"first piece: straight to the server p50 {f['direct_p50']:.0f} ms (p95 {f['direct_p95']:.0f}), "
            f"reason_stream through the queue p50 {f['queued_p50']:.0f} ms (p95 {f['queued_p95']:.0f}): "
            f"{f['later_p50']:+.0f} ms at the median; from the worker writing the first piece to the caller "
            f"holding it p50 {f['lag_p50']:.1f} ms, p95 {f['lag_p95']:.1f} ms",
            f"64 tokens straight from the server: unstreamed p50 {u['plain_p50']:.0f} ms, streamed p50 {u['streamed_p50']:.0f} ms",
        ]
    return emit("\n".join(lines), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
