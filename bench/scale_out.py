"""Throughput of the `embeddings` queue with one worker+server pair, then two.

Starts its own redis-server and one embedding llama-server (one thread, pinned
to CPU 0) with its worker, sends --batches `embed_batch` tasks of --texts texts
each and times them from the first send to the last result; then adds a second
pair (its own server pinned to CPU 1, its own worker on the same queue) and
sends the same load again. Nothing else is started: the pairs only share the
queue, as pairs on two hosts would.

    .venv/bin/python -m bench.scale_out [--batches 60] [--texts 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from athena_client.contract.payloads import EmbedBatchRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import Stack, free_port, local_stack_env, redis_port
from athena_inference.workers.ops.provision import provision


def run_load(sender: TaskSender, batches: int, texts: int) -> tuple[float, Counter]:
    payload = EmbedBatchRequest(texts=[f"memory {i}: the weekly report moved to Friday after the outage" for i in range(texts)])
    started = time.perf_counter()
    sent = [sender.send(TaskName.EMBED_BATCH, payload) for _ in range(batches)]
    for result in sent:
        sender.wait(TaskName.EMBED_BATCH, result, 600)
    elapsed = time.perf_counter() - started
    return batches * texts / elapsed, Counter(result.worker for result in sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--texts", type=int, default=64)
    args = parser.parse_args()

    provision(load_settings())
    env = local_stack_env(LLAMACPP_N_THREADS="1", ATHENA_EMBEDDINGS_SLOTS="1")
    with tempfile.TemporaryDirectory(prefix="athena-bench-scale-") as tmp:
        stack = Stack(Path(tmp), env)
        try:
            stack.redis(redis_port(env))
            first = {"ATHENA_EMBEDDINGS_CPUS": "0"}
            stack.llama("embeddings", env["LLAMACPP_EMBEDDINGS_URL"], first)
            stack.worker("embeddings", "pair1", first)
            sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
            stack.wait_for_workers(sender, {"embeddings@pair1"})
            run_load(sender, 4, args.texts)  # warm-up
            one, _ = run_load(sender, args.batches, args.texts)

            second_url = f"http://127.0.0.1:{free_port()}"
            second = {"LLAMACPP_EMBEDDINGS_URL": second_url, "ATHENA_EMBEDDINGS_CPUS": "1"}
            stack.llama("embeddings", second_url, second)
            stack.worker("embeddings", "pair2", second)
            stack.wait_for_workers(sender, {"embeddings@pair1", "embeddings@pair2"})
            run_load(sender, 4, args.texts)
            two, served = run_load(sender, args.batches, args.texts)
        finally:
            stack.stop_all()
    print(
        json.dumps(
            {
                "batches": args.batches,
                "texts_per_batch": args.texts,
                "one_pair_texts_per_s": round(one, 1),
                "two_pairs_texts_per_s": round(two, 1),
                "two_vs_one": round(two / one, 2),
                "batches_served_with_two_pairs": dict(served),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
