"""A 20-event consolidation end to end: latency, each stage's queue wait and run time,
overhead, and the compression gate against compressing always or never.

Starts its own Redis, both default servers and one worker per queue, then runs
a 20-event cluster in each `--modes` (compress=False, "auto" — the gate —, and
True), round after round, the order of the modes turned each round so that no
mode always finds the server's prompt cache warm. Each round's cluster is new
(its events carry the round number). "Model time" is the run time of the
compression, reasoning and embedding stages; overhead is everything else
(queue hops, preparation, serialisation).

    .venv/bin/python -m bench.consolidation [--runs 3] [--modes never,auto,always]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from athena_client import AthenaClient
from athena_client.contract.consolidation import ConsolidationResult, EpisodicEvent
from athena_inference.config.settings import load_settings
from athena_inference.tasks.consolidation.stages import COMPRESSION_RATE
from athena_inference.workers.ops.local_stack import ALL_QUEUES, Stack, local_stack_env
from athena_inference.workers.ops.provision import provision
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS as EVENTS

MODEL_STAGES = ("compression", "reasoning", "embedding")
MODES = {"never": False, "auto": "auto", "always": True}


def cluster_of_20(round_number: int = 0) -> list[EpisodicEvent]:
    start = datetime(2026, 11, 10, 9, 0, tzinfo=timezone.utc)
    more = [
        EpisodicEvent(id=f"f{i}", timestamp=start + timedelta(hours=i), event_type="note",
                      content=f"Follow-up {i} of week {round_number + 1}: {EVENTS[i % len(EVENTS)].content}", tags=["follow-up"])
        for i in range(20 - len(EVENTS))
    ]
    return list(EVENTS) + more


def stage_table(results: list[ConsolidationResult]) -> list[str]:
    lines = ["| stage | queue | queue wait | run |", "|---|---|---|---|"]
    for i, stage in enumerate(results[0].stages):
        waits = [r.stages[i].queue_wait_ms or 0.0 for r in results if len(r.stages) > i]
        runs = [r.stages[i].run_ms for r in results if len(r.stages) > i]
        lines.append(f"| {stage.stage} | {stage.queue} | {statistics.mean(waits):.0f} | {statistics.mean(runs):.0f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="never,auto,always", help="comma-separated, of: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {sorted(MODES)}")
    env = local_stack_env()
    os.environ.update(env)
    provision(load_settings())
    stack = Stack(Path(tempfile.mkdtemp(prefix="athena-bench-")), env)
    results: dict[str, list[ConsolidationResult]] = {m: [] for m in modes}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    try:
        stack.everything("bench")
        with AthenaClient(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"], timeout=900) as client:
            stack.wait_for_workers(client, {f"{queue}@bench" for queue in ALL_QUEUES}, timeout=120)
            # The gate decides on measured rates: one compressor run and one generation give it its first figures.
            client.compress_prompt("warm the compressor up before timing anything, and give the gate a first rate.", "Summarise.")
            for run in range(args.runs):
                for mode in modes if run % 2 == 0 else modes[::-1]:
                    started = time.perf_counter()
                    out = client.consolidation(cluster_of_20(run), compress=MODES[mode], embed_patterns=True, max_patterns=3, temperature=0.0)
                    walls[mode].append((time.perf_counter() - started) * 1000)
                    results[mode].append(out)
                    gate = out.stages[0].compression_gate
                    print(f"[bench] run {run + 1} {mode}: {walls[mode][-1] / 1000:.1f} s, {len(out.patterns)} patterns, "
                          f"compressed {out.compressed}" + (f" ({gate.reason})" if gate else ""), flush=True)
    finally:
        stack.stop_all()

    print(f"\n20-event cluster, reason + embed, compress as each mode says, {args.runs} runs (ms, mean over runs)\n")
    print("| mode | end to end | model time | overhead | compressed | kept of the events' tokens | the gate's last reason |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        model = [sum(s.run_ms for s in r.stages if s.stage in MODEL_STAGES) for r in results[mode]]
        ratios = [r.compression_ratio for r in results[mode] if r.compression_ratio is not None]
        kept = f"{statistics.mean(ratios):.0%} (asked {COMPRESSION_RATE:.0%})" if ratios else "-"
        gate = results[mode][-1].stages[0].compression_gate
        print(f"| {mode} | {statistics.mean(walls[mode]):.0f} | {statistics.mean(model):.0f} | "
              f"{statistics.mean(walls[mode]) - statistics.mean(model):.0f} | {sum(r.compressed for r in results[mode])} of {args.runs} | "
              f"{kept} | {gate.reason if gate else '-'} |")
    if "never" in modes:
        for mode in (m for m in modes if m != "never"):
            print(f"\n{mode} / never, end to end: {statistics.mean(walls[mode]) / statistics.mean(walls['never']):.2f}x")
    for mode in modes:
        print(f"\nstages, {mode}:\n" + "\n".join(stage_table(results[mode])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
