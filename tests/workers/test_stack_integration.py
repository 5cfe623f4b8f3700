"""`athena-inference up --check`: the README's first command, on free ports."""

from __future__ import annotations

import os
import subprocess

from tests.harness import CLI, free_port


def test_up_brings_the_stack_up_and_shows_a_job_through_every_queue(provisioned):
    env = dict(
        os.environ,
        ATHENA_BROKER_URL=f"redis://127.0.0.1:{(redis_port := free_port())}/0",
        ATHENA_RESULT_BACKEND=f"redis://127.0.0.1:{redis_port}/1",
        LLAMACPP_EMBEDDINGS_URL=f"http://127.0.0.1:{free_port()}",
        LLAMACPP_REASONING_URL=f"http://127.0.0.1:{free_port()}",
        ATHENA_FLOWER_PORT=str(free_port()),
    )
    done = subprocess.run([*CLI, "up", "--check"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "starting: redis, embeddings-server, reasoning-server" in out
    for queue in ("embeddings", "reasoning", "compression", "consolidation"):
        assert f"{queue}-worker" in out
    assert "athena.embed on 'embeddings': 384-d vector" in out
    assert "athena.embed_batch on 'embeddings': 2 vectors" in out
    assert "athena.reason on 'reasoning':" in out
    assert "tok/s" in out and "queue wait" in out
    assert "stack is up" in out
