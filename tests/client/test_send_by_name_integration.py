"""A separate client process sends tasks by name with only the light contract package."""

from __future__ import annotations

import json
import subprocess
import sys

CLIENT = r"""
import json, sys
from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender

sender = TaskSender(sys.argv[1], sys.argv[2])
embedded = sender.call(TaskName.EMBED, EmbedRequest(text="sent by name"))
reasoned = sender.call(TaskName.REASON, ReasonRequest(prompt="Say hello.", max_tokens=8, temperature=0.0))
worker_code = sorted(m for m in sys.modules if m.startswith("athena_inference"))
print(json.dumps({"dimension": embedded.dimension, "text": reasoned.text, "worker_code": worker_code}))
"""


def test_client_process_sends_by_name_without_worker_code(sender, stack):
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, stack.env["ATHENA_BROKER_URL"], stack.env["ATHENA_RESULT_BACKEND"]],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["dimension"] == 384 and out["text"].strip()
    assert out["worker_code"] == []
