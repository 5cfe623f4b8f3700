"""Re-embedding throughput, its cost to interactive embeds, and the runner's memory.

Starts its own redis-server, the interactive embedding server and the bulk
lane's copies (one thread each, the bulk ones at nice 19, one per CPU, as the
stack runs them), an `embeddings` and an
`embeddings_bulk` worker, then measures, in one run, on the same generated
memories (unique texts of 8 to 60 words):

  direct    texts/s of batched requests straight to the bulk llama-servers
            (one sender per copy), batches of --direct-batch texts (no queue, no store);
  per-text  texts/s of one request per text, as Athena embeds today
            (on the first --per-text texts);
  job       texts/s of `athena-inference reembed start --jsonl` over the rows,
            from the job's start to its end, output written as .npy;
  torch     texts/s of the in-process peer on the same texts: the same
            checkpoint in torch on every core, sentence-transformers' recipe
            (bench/torch_peer.py: length-sorted batches of 64, mean pooling);
  idle      interactive `embed` latency (enqueue to finish) with nothing else running;
  loaded    the same embeds while the job runs;
  rss       the runner process's peak RSS (VmHWM) for --rows and for --rss-rows.

    .venv/bin/python -m bench.reembed [--rows 10000] [--rss-rows 100000] [--embeds 100]

--rss-rows 0 skips the second, large job.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender
from athena_client.shared_redis.job_store import JobStore
from athena_inference.config.servers import copy_url
from athena_inference.config.settings import load_settings
from athena_inference.workers.metrics import latency_stats
from athena_inference.workers.ops.local_stack import CLI, Stack, bulk_copies_env, local_stack_env, redis_port
from athena_inference.workers.ops.provision import embedding_source_model, provision

from bench.direct import direct_texts_per_s
from bench.torch_peer import CPUS, TorchPeer

WORDS = (
    "user meeting friday tea cat backup night project deadline moved prefers morning coffee garden "
    "report budget travel flight hotel doctor appointment birthday gift music guitar lesson code review "
    "deploy server outage fixed memory vector search index cluster pattern weekly summary call notes"
).split()


def memories(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"[{i}] " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) for i in range(count)]


def write_jsonl(path: Path, texts: list[str]) -> None:
    with path.open("w") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({"id": i, "content": text}) + "\n")


def e2e_ms(result: dict) -> float:
    timing = result["timing"]
    return (datetime.fromisoformat(timing["finished_at"]) - datetime.fromisoformat(timing["enqueued_at"])).total_seconds() * 1000


def interactive_embeds(sender: TaskSender, count: int, pace_s: float, keep_going=lambda: True) -> list[float]:
    latencies = []
    for i in range(count):
        if not keep_going():
            break
        sent = sender.send(TaskName.EMBED, EmbedRequest(text=f"what did the user say about tea? ({i})"))
        latencies.append(e2e_ms(sent.get(timeout=120)))
        time.sleep(pace_s)
    return latencies


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_job(stack: Stack, jobs: JobStore, source: Path, output: Path, name: str, during=None) -> dict:
    before = set(jobs.job_ids())
    runner = stack.start(name, [*CLI, "reembed", "start", "--jsonl", str(source), "--output", str(output)])
    peak = 0.0
    side = threading.Thread(target=during) if during else None
    if side:
        side.start()
    while runner.popen.poll() is None:
        peak = max(peak, peak_rss_mb(runner.popen.pid))
        time.sleep(0.2)
    if side:
        side.join()
    if runner.popen.returncode != 0:
        raise SystemExit(f"{name} failed:\n{runner.log_tail()}")
    [job_id] = set(jobs.job_ids()) - before
    state = jobs.get(job_id)
    seconds = (state.finished_at - state.started_at).total_seconds()
    return {"job_id": job_id, "rows": state.counts.total, "seconds": seconds, "texts_per_s": state.counts.completed / seconds, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rss-rows", type=int, default=100_000)
    parser.add_argument("--per-text", type=int, default=1000)
    parser.add_argument("--direct-batch", type=int, default=128)
    parser.add_argument("--embeds", type=int, default=100)
    parser.add_argument("--pace", type=float, default=0.1, help="seconds between interactive embeds")
    parser.add_argument(
        "--bulk-servers", type=int, default=load_settings().embeddings_bulk_copies,
        help="single-thread bulk servers (the stack's default: one per CPU)",
    )
    args = parser.parse_args()

    settings = load_settings()
    provision(settings)
    texts = memories(args.rows, seed=1)
    # The peer first, alone on the machine, as a user would run it.
    torch_rate, _ = TorchPeer(embedding_source_model(settings)).texts_per_s(texts, CPUS)
    env = local_stack_env(LLAMACPP_N_THREADS="1", **bulk_copies_env(args.bulk_servers))
    with tempfile.TemporaryDirectory(prefix="athena-bench-reembed-") as tmp:
        work = Path(tmp)
        stack = Stack(work, env)
        try:
            stack.redis(redis_port(env))
            stack.llama("embeddings", env["LLAMACPP_EMBEDDINGS_URL"])
            stack.bulk_servers()
            stack.worker("embeddings", "bench")
            stack.worker("embeddings_bulk", "bench")
            sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
            stack.wait_for_workers(sender, {"embeddings@bench", "embeddings_bulk@bench"})
            jobs = JobStore.from_url(env["ATHENA_RESULT_BACKEND"])

            source = work / "memories.jsonl"
            write_jsonl(source, texts)
            bulk = [copy_url(env["ATHENA_EMBEDDINGS_BULK_URL"], i) for i in range(args.bulk_servers)]
            direct_texts_per_s(bulk, texts[:64], args.direct_batch)  # warm-up
            interactive_embeds(sender, 10, 0.05)

            direct = direct_texts_per_s(bulk, texts, args.direct_batch)[0]
            per_text = direct_texts_per_s(bulk, texts[: args.per_text], 1)[0]
            idle = interactive_embeds(sender, args.embeds, args.pace)

            loaded: list[float] = []
            running = threading.Event()
            running.set()

            def during_job() -> None:
                time.sleep(2.0)  # past the runner's start-up, into the batches
                loaded.extend(interactive_embeds(sender, args.embeds, args.pace, keep_going=running.is_set))

            job = run_job(stack, jobs, source, work / "vectors.npy", "job", during=during_job)
            running.clear()

            big = None
            if args.rss_rows:
                big_source = work / "memories-big.jsonl"
                write_jsonl(big_source, memories(args.rss_rows, seed=2))
                big = run_job(stack, jobs, big_source, work / "vectors-big.npy", "job-big")
        finally:
            stack.stop_all()

    idle_stats, loaded_stats = latency_stats(idle), latency_stats(loaded)
    report = {
        "rows": args.rows,
        "bulk_servers": args.bulk_servers,
        "direct_texts_per_s": round(direct, 1),
        "direct_batch": args.direct_batch,
        "per_text_texts_per_s": round(per_text, 1),
        "job_texts_per_s": round(job["texts_per_s"], 1),
        "job_vs_direct": round(job["texts_per_s"] / direct, 3),
        "job_vs_per_text": round(job["texts_per_s"] / per_text, 3),
        "torch_texts_per_s": round(torch_rate, 1),
        "torch_threads": CPUS,
        "job_vs_torch": round(job["texts_per_s"] / torch_rate, 3),
        "interactive_idle_ms": {"p50": round(idle_stats.p50, 1), "p95": round(idle_stats.p95, 1), "n": len(idle)},
        "interactive_during_job_ms": {"p50": round(loaded_stats.p50, 1), "p95": round(loaded_stats.p95, 1), "n": len(loaded)},
        "interactive_ratio": {"p50": round(loaded_stats.p50 / idle_stats.p50, 2), "p95": round(loaded_stats.p95 / idle_stats.p95, 2)},
        "runner_peak_rss_mb": {str(args.rows): round(job["peak_rss_mb"], 1)},
    }
    if big is not None:
        report["runner_peak_rss_mb"][str(args.rss_rows)] = round(big["peak_rss_mb"], 1)
        report["big_job_texts_per_s"] = round(big["texts_per_s"], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
