"""Concurrent single embeds through the queue, against one batched request of the same texts.

    .venv/bin/python -m bench.batching [--rounds 15] [--texts 32] [--pools threads,prefork] [--json out.json]

For each embeddings worker pool in `--pools` (`ATHENA_EMBEDDINGS_POOL`:
"threads" merges concurrent embeds into shared server requests, "prefork"
runs one embed per process, as before), starts the stack as
`athena-inference up` does, on free ports, then runs `--rounds` rounds, each
with the same `--texts` different memories:

  direct batch   one request of all the texts straight to the embeddings
                 llama-server (the peer: what a caller batching by hand gets)
  queued batch   one `embed_batch` task of all the texts
  singles        one `embed` per text, all at once (`asyncio.gather` over
                 `AsyncAthenaClient.embed`, as Athena's async code calls it)

and prints the median texts/s of each, and singles / direct batch, per pool.
It also adds up the CPU time each process of the stack (and this client) spends
during the singles rounds, per embed: on a 2-core machine the queue's own CPU
competes with the model server's, so it is where the singles' time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from athena_client.async_client import AsyncAthenaClient
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import UpStack, descendants
from athena_inference.workers.ops.provision import provision
from bench.output import emit

SUBJECTS = ["the payments team", "the on-call engineer", "the data platform group", "the support lead", "the release manager"]
EVENTS = [
    "reviewed the nightly reconciliation job after it failed twice",
    "moved the staging database to the new cluster and checked the backups",
    "wrote down why the cache was flushed during the Tuesday incident",
    "agreed to rotate the SFTP credentials every ninety days",
    "found that the export ran out of memory on the largest customer",
    "added a dashboard panel for the processed row count of every batch job",
    "postponed the schema migration until the index rebuild finished",
]


def memories(count: int) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {EVENTS[i % len(EVENTS)]} (note {i})" for i in range(count)]


def direct_batch(http: httpx.Client, url: str, texts: list[str]) -> float:
    began = time.perf_counter()
    response = http.post(f"{url}/v1/embeddings", json={"input": texts})
    response.raise_for_status()
    assert len(response.json()["data"]) == len(texts)
    return time.perf_counter() - began


async def queued_batch(client: AsyncAthenaClient, texts: list[str]) -> float:
    began = time.perf_counter()
    out = await client.embed_batch(texts, batch_size=len(texts))
    assert len(out) == len(texts)
    return time.perf_counter() - began


async def singles(client: AsyncAthenaClient, texts: list[str]) -> tuple[float, list[int]]:
    began = time.perf_counter()
    out = await asyncio.gather(*(client.embed(text) for text in texts))
    elapsed = time.perf_counter() - began
    return elapsed, [r.timing.server.batch_texts or 1 for r in out]


TICKS = os.sysconf("SC_CLK_TCK")


def role(args: str, env: dict[str, str]) -> str:
    """What a process of the stack is, from its command line."""
    if "honcho" in args or args.startswith("/bin/sh -c "):
        # Honcho's own processes name every process of the Procfile; the shells it starts name theirs.
        return "up, honcho, wrappers"
    if "llama-server" in args:
        ports = {env[k].rsplit(":", 1)[1]: k for k in ("LLAMACPP_EMBEDDINGS_URL", "LLAMACPP_REASONING_URL", "ATHENA_EMBEDDINGS_BULK_URL")}
        port = args.split("--port", 1)[1].split()[0] if "--port" in args else ""
        return {"LLAMACPP_EMBEDDINGS_URL": "embeddings llama-server"}.get(ports.get(port, ""), "other llama-servers")
    if "celery" in args and " -Q " in args:
        queue = args.split(" -Q ", 1)[1].split()[0]
        return "embeddings worker" if queue == "embeddings" else "other workers (idle)"
    for name in ("redis-server", "flower", "exporter"):
        if name in args:
            return name
    return "up, honcho, wrappers"


def stack_cpu(root: int, env: dict[str, str]) -> dict[str, float]:
    """CPU seconds so far of every process under `root`, by role."""
    seconds: dict[str, float] = {}
    for pid in descendants(root):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = role(args, env)
        seconds[name] = seconds.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


async def measure(up: UpStack, pool: str, rounds: int, count: int) -> dict:
    texts = memories(count)
    url = up.env["LLAMACPP_EMBEDDINGS_URL"]
    client = AsyncAthenaClient(up.url("ATHENA_BROKER_URL"), up.url("ATHENA_RESULT_BACKEND"), timeout=60)
    http = httpx.Client(timeout=60)
    times: dict[str, list[float]] = {"direct batch": [], "queued batch": [], "singles": []}
    shared: list[int] = []
    cpu: dict[str, float] = {}
    try:
        await singles(client, texts)
        await queued_batch(client, texts)
        for _ in range(rounds):
            times["direct batch"].append(direct_batch(http, url, texts))
            times["queued batch"].append(await queued_batch(client, texts))
            before, mine = stack_cpu(up.popen.pid, up.env), time.process_time()
            elapsed, batch_sizes = await singles(client, texts)
            after = stack_cpu(up.popen.pid, up.env)
            cpu["client (this process)"] = cpu.get("client (this process)", 0.0) + time.process_time() - mine
            for name, used in after.items():
                cpu[name] = cpu.get(name, 0.0) + used - before.get(name, 0.0)
            times["singles"].append(elapsed)
            shared += batch_sizes
    finally:
        http.close()
        await client.close()
    rate = {name: count / statistics.median(values) for name, values in times.items()}
    return {
        "pool": pool,
        "texts": count,
        "rounds": rounds,
        "texts_per_s": rate,
        "singles_vs_direct_batch": rate["singles"] / rate["direct batch"],
        "singles_vs_queued_batch": rate["singles"] / rate["queued batch"],
        "median_texts_per_server_request": statistics.median(shared),
        "cpu_ms_per_single_embed": {name: used * 1000 / (rounds * count) for name, used in sorted(cpu.items(), key=lambda kv: -kv[1])},
    }


def report(rows: list[dict]) -> str:
    lines = [
        "| pool | direct batch texts/s | queued batch texts/s | singles texts/s | singles / direct batch | singles / queued batch | texts per server request (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["texts_per_s"]
        lines.append(
            f"| {r['pool']} | {t['direct batch']:.0f} | {t['queued batch']:.0f} | {t['singles']:.0f} | "
            f"**{r['singles_vs_direct_batch']:.2f}x** | {r['singles_vs_queued_batch']:.2f}x | {r['median_texts_per_server_request']:.0f} |"
        )
    lines += ["", "CPU per single embed (ms), during the singles rounds:", "", "| process | " + " | ".join(r["pool"] for r in rows) + " |"]
    lines.append("|---" * (len(rows) + 1) + "|")
    names = list(dict.fromkeys(name for r in rows for name in r["cpu_ms_per_single_embed"]))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['cpu_ms_per_single_embed'].get(name, 0.0):.2f}" for r in rows) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--pools", default="threads,prefork")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    provision(load_settings())
    rows = []
    with tempfile.TemporaryDirectory(prefix="athena-batching-") as tmp:
        for pool in args.pools.split(","):
            up = UpStack(Path(tmp) / pool, ATHENA_EMBEDDINGS_POOL=pool)
            try:
                rows.append(asyncio.run(measure(up, pool, args.rounds, args.texts)))
            finally:
                up.stop()
    return emit(report(rows), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
