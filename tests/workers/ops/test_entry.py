"""The console script, as a user runs it: an invalid setting is one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def run_console_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    # A new process: the settings are read while the commands load, before any handler of cli.main.
    return subprocess.run(
        [sys.executable, "-m", "athena_inference.workers.ops.entry", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_invalid_setting_is_one_clear_error_for_every_command():
    for command in (["health"], ["up", "--check"], ["reembed", "list"]):
        done = run_console_script(*command, ATHENA_EMBEDDINGS_SLOTS="0")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("error: invalid settings:")
        assert "ATHENA_EMBEDDINGS_SLOTS" in done.stderr


def test_valid_settings_reach_the_commands():
    done = run_console_script("--help")
    assert done.returncode == 0, done.stderr
    assert "health" in done.stdout
