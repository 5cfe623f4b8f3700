"""A virtual environment holding the client alone, as Athena installs it."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests.harness import TEST_RUN_ENV

ROOT = Path(__file__).resolve().parents[2]


class ClientOnlyVenv:
    """A fresh virtual environment with the base install only: what Athena installs.

    Built in a thread from the end of collection on, while the session's stack
    starts and the first tests run, when a selected test asks for it. One per
    test run: xdist's workers share it (the first to take its lock builds it,
    the others wait for it off their tests' path), and the run's controller
    removes it at the end.
    """

    def __init__(self) -> None:
        self.folder = shared_venv_folder()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._build, daemon=True)
        self.thread.start()

    def _build(self) -> None:
        try:
            with open(f"{self.folder}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if (self.folder / BUILT).exists():
                    return
                shutil.rmtree(self.folder, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "venv", str(self.folder)], check=True, capture_output=True)
                # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
                with tempfile.TemporaryDirectory(prefix="athena-client-src-") as copy:
                    source = Path(copy) / "src"
                    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"))
                    subprocess.run([str(self.folder / "bin" / "pip"), "install", "-q", str(source)], check=True, capture_output=True, timeout=600)
                (self.folder / BUILT).touch()
        except subprocess.CalledProcessError as exc:
            self.error = RuntimeError(f"{' '.join(map(str, exc.cmd))} failed:\n{(exc.stderr or b'').decode(errors='replace')[-3000:]}")
        except BaseException as exc:  # noqa: BLE001 - raised again in the test that needs it
            self.error = exc

    def python(self) -> str:
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"could not build the client-only environment: {self.error}") from self.error
        return str(self.folder / "bin" / "python")


BUILT = ".built"


def shared_venv_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"athena-client-venv-{os.environ[TEST_RUN_ENV]}"


_VENV: list[ClientOnlyVenv] = []


def pytest_collection_finish(session):
    if any("client_only_python" in getattr(item, "fixturenames", ()) for item in session.items):
        _VENV.append(ClientOnlyVenv())


def pytest_sessionfinish(session):
    for venv in _VENV:
        venv.thread.join()


@pytest.fixture(scope="session")
def client_only_python() -> str:
    """The client-only environment's python."""
    if not _VENV:
        _VENV.append(ClientOnlyVenv())
    return _VENV[0].python()
