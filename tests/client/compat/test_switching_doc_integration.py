"""docs/switching-athena.md's calls, run as the page writes them, from a virtual
environment that holds the client alone, against the real stack."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "switching-athena.md"
pytestmark = pytest.mark.integration


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_the_page_has_athenas_monitor_call_as_its_docs_write_it():
    [block] = python_blocks(DOC.read_text())
    assert "monitor.record_embedding(latency_ms=85.5, dimension=768, tokens=50)" in block
    assert "stats = monitor.get_all_stats()" in block


def test_every_call_on_the_page_runs_as_written(sender, stack, client_only_python, tmp_path):
    [block] = python_blocks(DOC.read_text())
    program = tmp_path / "switching_athena.py"
    program.write_text(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATHENA_", "LLAMACPP_"))}
    env.update(ATHENA_BROKER_URL=stack.env["ATHENA_BROKER_URL"], ATHENA_RESULT_BACKEND=stack.env["ATHENA_RESULT_BACKEND"])
    done = subprocess.run([client_only_python, str(program)], env=env, capture_output=True, text=True, timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    dimension, similarity, tokens = lines[0].split()
    assert dimension == "384" and 0 < float(similarity) < 1 and int(tokens) > 0
    assert int(lines[1].split()[1]) < int(lines[1].split()[0]) and "```json" in lines[1]
    assert "{'embedding': True, 'reasoning': True, 'compression': True}" in lines[1]
    assert lines[2] == "gave up on a generation"
    assert lines[3].split()[0] == "384" and lines[3].split()[2] == "True"
    recorded, output_tokens, saved = (int(x) for x in lines[4].split())
    assert recorded >= 1 and output_tokens >= 12 and saved >= 600
    assert lines[5:] and all(line in ("e1", "e2") for line in lines[5:])
