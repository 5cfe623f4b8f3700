"""compose/redis-entrypoint.sh run for real with /bin/sh, a stub redis-server
first on PATH in place of Redis."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "compose" / "redis-entrypoint.sh"

# Records what redis-server was started with: its arguments, then the mode and
# the contents of the config file it was handed, then exits as if Redis stopped.
STUB = """#!/bin/sh
{
    for arg in "$@"; do echo "arg=$arg"; done
    echo "mode=$(stat -c %a "$1")"
    echo "---"
    cat "$1"
} > "$STUB_RECORD"
"""


@dataclass
class Start:
    returncode: int
    stderr: str
    args: Optional[list[str]] = None  # None: redis-server never ran
    mode: Optional[str] = None
    config: Optional[str] = None


@pytest.fixture
def start_redis(tmp_path) -> Callable[[Optional[str]], Start]:
    """Runs the entry script with REDIS_PASSWORD set to the given value (unset for None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").write_text(STUB)
    (bin_dir / "redis-server").chmod(0o755)
    record = tmp_path / "redis-server.record"

    def start(password: Optional[str]) -> Start:
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "REDIS_CONFIG_FILE": str(tmp_path / "redis.conf"),
            "STUB_RECORD": str(record),
        }
        if password is not None:
            env["REDIS_PASSWORD"] = password
        # Docker's default umask, not whatever the test runner has: the script must make the file private itself.
        done = subprocess.run(["/bin/sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30, umask=0o022)
        if not record.exists():
            return Start(done.returncode, done.stderr)
        head, _, config = record.read_text().partition("---\n")
        lines = head.splitlines()
        args = [line.removeprefix("arg=") for line in lines if line.startswith("arg=")]
        [mode] = [line.removeprefix("mode=") for line in lines if line.startswith("mode=")]
        return Start(done.returncode, done.stderr, args, mode, config)

    return start
