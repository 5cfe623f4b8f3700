"""Does a reasoning backlog slow down embeddings? Separate queues vs one shared queue.

Starts its own redis-server and the two default llama-servers (one thread each,
`LLAMACPP_N_THREADS`), then for each layout:

  idle    embed one short text at a time, nothing else running;
  loaded  fill the queue with long generations, then send the same embeds at a
          fixed pace while the backlog runs.

Layouts:
  separate  embeddings and reasoning on their own queues and workers
            (concurrency = each server's slots), as the stack runs;
  shared    every task on one queue, consumed by one worker whose concurrency
            is the sum of both servers' slots.

Latency is end to end as the tasks' own timing records it: from the moment the
client stamped the message (enqueued_at) to the worker's finish (finished_at).

    .venv/bin/python -m bench.isolation [--embeds 100] [--backlog 12] [--gen-tokens 256] [--layouts separate,shared]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import ENQUEUED_AT_HEADER, Queue, TaskName
from athena_client.sender import TaskSender
from athena_inference.config.settings import load_settings
from athena_inference.workers.metrics import latency_stats
from athena_inference.workers.ops.local_stack import Stack, local_stack_env
from athena_inference.workers.ops.processes import worker_argv
from athena_inference.workers.ops.provision import provision

STORY = (
    "Write a long, detailed story about a lighthouse keeper who keeps a diary of every ship "
    "that passes, with many chapters, names, dates and dialogue."
)


def send(sender: TaskSender, task: TaskName, request, queue: str):
    return sender.app.send_task(
        task.value, kwargs=request.model_dump(mode="json"), queue=queue, headers={ENQUEUED_AT_HEADER: time.time()}
    )


def e2e_ms(result: dict) -> float:
    from datetime import datetime

    timing = result["timing"]
    return (datetime.fromisoformat(timing["finished_at"]) - datetime.fromisoformat(timing["enqueued_at"])).total_seconds() * 1000


def measure_embeds(sender: TaskSender, queue: str, count: int, pace_s: float) -> list[float]:
    pending = []
    for i in range(count):
        pending.append(send(sender, TaskName.EMBED, EmbedRequest(text=f"memory number {i}: the build broke after the merge"), queue))
        time.sleep(pace_s)
    return [e2e_ms(p.get(timeout=600)) for p in pending]


def run_layout(stack: Stack, sender: TaskSender, layout: str, args, settings) -> dict:
    if layout == "separate":
        queues = {"embed": "embeddings", "reason": "reasoning"}
        workers = [
            stack.start(f"bench-{layout}-embeddings", worker_argv(Queue.EMBEDDINGS, settings, node_suffix=layout)),
            stack.start(f"bench-{layout}-reasoning", worker_argv(Queue.REASONING, settings, node_suffix=layout)),
        ]
    else:
        queues = {"embed": "shared", "reason": "shared"}
        argv = worker_argv(Queue.EMBEDDINGS, settings, node_suffix=layout)
        argv[argv.index("-Q") + 1] = "shared"
        argv[argv.index("-c") + 1] = str(settings.embeddings_slots + settings.reasoning_slots)
        workers = [stack.start(f"bench-{layout}-shared", argv)]
    served = ("embeddings", "reasoning") if layout == "separate" else ("embeddings",)
    stack.wait_for_workers(sender, {f"{queue}@{layout}" for queue in served})

    # Warm up both servers and every worker process.
    measure_embeds(sender, queues["embed"], 6, 0.05)
    send(sender, TaskName.REASON, ReasonRequest(prompt="hi", max_tokens=4), queues["reason"]).get(timeout=120)

    idle = measure_embeds(sender, queues["embed"], args.embeds, args.pace)
    backlog = [
        send(sender, TaskName.REASON, ReasonRequest(prompt=STORY, max_tokens=args.gen_tokens, temperature=0.8), queues["reason"])
        for _ in range(args.backlog)
    ]
    time.sleep(1.0)
    loaded = measure_embeds(sender, queues["embed"], args.embeds, args.pace)
    generated = [p.get(timeout=1800)["timing"]["server"]["generated_tokens"] for p in backlog]
    for worker in workers:
        worker.stop()
    return {"idle": latency_stats(idle), "loaded": latency_stats(loaded), "generated": sum(generated)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeds", type=int, default=100, help="embeds per phase")
    parser.add_argument("--pace", type=float, default=0.25, help="seconds between embeds")
    parser.add_argument("--backlog", type=int, default=12, help="long generations queued")
    parser.add_argument("--gen-tokens", type=int, default=256, help="max_tokens of each generation")
    parser.add_argument("--layouts", default="separate,shared", help="comma-separated: separate, shared")
    args = parser.parse_args()

    env = local_stack_env(LLAMACPP_N_THREADS=os.environ.get("LLAMACPP_N_THREADS", "1"))
    os.environ.update(env)
    settings = load_settings()
    provision(settings)
    stack = Stack(Path(tempfile.mkdtemp(prefix="athena-bench-")), env)
    results = {}
    try:
        stack.servers()
        sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
        for layout in args.layouts.split(","):
            print(f"[bench] layout {layout} ...", flush=True)
            results[layout] = run_layout(stack, sender, layout, args, settings)
        sender.close()
    finally:
        stack.stop_all()

    print(f"\nembedding latency, enqueue to finish, ms ({args.embeds} embeds per phase, "
          f"backlog {args.backlog} x {args.gen_tokens} tokens, {settings.n_threads} thread(s) per server)\n")
    print("| layout | idle p50 | idle p95 | loaded p50 | loaded p95 | p50 ratio | p95 ratio |")
    print("|---|---|---|---|---|---|---|")
    for layout, r in results.items():
        idle, loaded = r["idle"], r["loaded"]
        print(f"| {layout} | {idle.p50:.1f} | {idle.p95:.1f} | {loaded.p50:.1f} | {loaded.p95:.1f} "
              f"| {loaded.p50 / idle.p50:.2f}x | {loaded.p95 / idle.p95:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
