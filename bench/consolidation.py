"""A 20-event consolidation end to end: latency, each stage's queue wait and run time, overhead.

Starts its own Redis, both default servers and one worker per queue, then runs
the same cluster several times with compression and pattern embedding on.
"Model time" is the run time of the compression, reasoning and embedding
stages; overhead is everything else (queue hops, preparation, serialisation).

    .venv/bin/python -m bench.consolidation [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from athena_client import AthenaClient
from athena_client.contract.consolidation import EpisodicEvent
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import ALL_QUEUES, Stack, local_stack_env
from athena_inference.workers.ops.provision import provision
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS as EVENTS

MODEL_STAGES = ("compression", "reasoning", "embedding")


def cluster_of_20() -> list[EpisodicEvent]:
    start = datetime(2026, 11, 10, 9, 0, tzinfo=timezone.utc)
    more = [
        EpisodicEvent(id=f"f{i}", timestamp=start + timedelta(hours=i), event_type="note",
                      content=f"Follow-up {i}: {EVENTS[i % len(EVENTS)].content}", tags=["follow-up"])
        for i in range(20 - len(EVENTS))
    ]
    return list(EVENTS) + more


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = local_stack_env()
    os.environ.update(env)
    provision(load_settings())
    stack = Stack(Path(tempfile.mkdtemp(prefix="athena-bench-")), env)
    results, walls = [], []
    try:
        stack.everything("bench")
        with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=900) as client:
            stack.wait_for_workers(client, {f"{queue}@bench" for queue in ALL_QUEUES}, timeout=120)
            client.compress_prompt("warm the compressor up before timing anything", "Summarise.")
            for run in range(args.runs):
                started = time.perf_counter()
                out = client.consolidation(cluster_of_20(), compress=True, embed_patterns=True, max_patterns=3)
                walls.append((time.perf_counter() - started) * 1000)
                results.append(out)
                print(f"[bench] run {run + 1}: {walls[-1] / 1000:.1f} s, {len(out.patterns)} patterns", flush=True)
    finally:
        stack.stop_all()

    print(f"\n20-event cluster, compress + reason + embed, {args.runs} runs (ms, mean over runs)\n")
    print("| stage | queue | queue wait | run |")
    print("|---|---|---|---|")
    for i, stage in enumerate(results[0].stages):
        waits = [r.stages[i].queue_wait_ms or 0.0 for r in results]
        runs = [r.stages[i].run_ms for r in results]
        print(f"| {stage.stage} | {stage.queue} | {sum(waits) / len(waits):.0f} | {sum(runs) / len(runs):.0f} |")
    # End to end as the caller sees it: from submit to typed result.
    totals = walls
    model = [sum(s.run_ms for s in r.stages if s.stage in MODEL_STAGES) for r in results]
    overhead = [t - m for t, m in zip(totals, model, strict=True)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"\nend to end: {mean(totals):.0f} ms; model time {mean(model):.0f} ms; "
          f"overhead {mean(overhead):.0f} ms = {mean(overhead) / mean(totals):.1%} of the total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
