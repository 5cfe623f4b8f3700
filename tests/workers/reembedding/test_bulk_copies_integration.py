"""The bulk lane as the stack runs it on a multi-CPU machine: several single-thread
llama-servers (`serve embeddings-bulk --copy N`), one prefork worker in front of
all of them, a job's batches spread over every copy, and the health task looking at each."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import httpx
import numpy as np
import pytest

from athena_inference.config.servers import copy_url
from tests.harness import CLI
from tests.minilm_reference import assert_same_vectors
from tests.workers.reembedding.test_reembed_integration import memories

pytestmark = pytest.mark.integration

COPIES = 2


@pytest.fixture(scope="module")
def copies_lane(lane):
    """The package's bulk lane, which runs two copies; the last test here kills one, and starts it again."""
    assert int(lane.env["ATHENA_EMBEDDINGS_BULK_SERVERS"]) == COPIES
    lane.urls = [copy_url(lane.env["ATHENA_EMBEDDINGS_BULK_URL"], i) for i in range(COPIES)]
    return lane


def prompt_tokens(url: str) -> float:
    """Tokens the server has read so far, from its Prometheus metrics (--metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(re.search(r"^llamacpp:prompt_tokens_total (\S+)$", text, re.MULTILINE).group(1))


def test_a_job_spreads_its_batches_over_every_copy_and_gets_the_servers_vectors(copies_lane, tmp_path):
    texts = memories(400, prefix="copies")
    source = tmp_path / "memories.jsonl"
    source.write_text("".join(json.dumps({"id": i, "content": text}) + "\n" for i, text in enumerate(texts)))
    before = [prompt_tokens(url) for url in copies_lane.urls]
    done = subprocess.run(
        [*CLI, "reembed", "start", "--jsonl", str(source), "--output", str(tmp_path / "out.npy"), "--batch-texts", "16", "--window", "4"],
        env=copies_lane.env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    read = [prompt_tokens(url) - start for url, start in zip(copies_lane.urls, before)]
    # 25 batches of about 14 tokens a text; each copy read a good share of them.
    assert all(tokens > 0.2 * sum(read) for tokens in read), read
    vectors = np.load(tmp_path / "out.npy")
    direct = httpx.post(f"{copies_lane.urls[-1]}/v1/embeddings", json={"input": texts[:32]}, timeout=60).json()["data"]
    assert_same_vectors(vectors[:32], [item["embedding"] for item in direct])


def test_every_copy_runs_at_nice_19_under_the_idle_policy(copies_lane):
    copies = [proc for proc in copies_lane.procs if proc.name.startswith("embeddings-bulk-server") and proc.popen.poll() is None]
    assert len(copies) == COPIES
    for proc in copies:
        # `serve` execs the server, so the process started is the llama-server itself; its threads inherit the policy.
        for thread in os.listdir(f"/proc/{proc.popen.pid}/task"):
            assert os.sched_getscheduler(int(thread)) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, proc.popen.pid) == 19


def test_the_bulk_health_task_looks_at_every_copy(copies_lane):
    bulk = copies_lane.client.health(timeout=10).queues["embeddings_bulk"]
    assert bulk.server_ready, bulk
    assert bulk.detail == f"ok ({COPIES} copies)"


def test_a_job_finishes_on_the_other_copy_when_one_is_killed(copies_lane, tmp_path):
    [_, second] = [proc for proc in copies_lane.procs if proc.name.startswith("embeddings-bulk-server") and proc.popen.poll() is None]
    second.stop(signal.SIGKILL)
    try:
        finishes_on_the_first_copy(copies_lane, tmp_path)
    finally:
        # The lane is the package's: its second copy back for the tests after this one.
        copies_lane.llama("embeddings-bulk", copies_lane.urls[1], copy=2)


def finishes_on_the_first_copy(copies_lane, tmp_path) -> None:
    texts = memories(120, prefix="failover")
    source = tmp_path / "memories.jsonl"
    source.write_text("".join(json.dumps({"id": i, "content": text}) + "\n" for i, text in enumerate(texts)))
    done = subprocess.run(
        [*CLI, "reembed", "start", "--jsonl", str(source), "--output", str(tmp_path / "out.npy"), "--batch-texts", "8", "--window", "4"],
        env=copies_lane.env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "120 embedded, 0 skipped, 0 failed of 120" in done.stdout
    direct = httpx.post(f"{copies_lane.urls[0]}/v1/embeddings", json={"input": texts[-8:]}, timeout=60).json()["data"]
    assert_same_vectors(np.load(tmp_path / "out.npy")[-8:], [item["embedding"] for item in direct])
    bulk = copies_lane.client.health(timeout=10).queues["embeddings_bulk"]
    assert not bulk.server_ready and f"1 of {COPIES} copies not ready: {copies_lane.urls[1]}" in bulk.detail
