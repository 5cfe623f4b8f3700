"""A virtual environment holding the client alone, as Athena installs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def client_only_python(tmp_path_factory) -> str:
    """A fresh virtual environment with the base install only: what Athena installs."""
    venv = tmp_path_factory.mktemp("athena-client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], check=True, timeout=600)
    return str(venv / "bin" / "python")
