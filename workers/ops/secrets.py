"""The embedded stack's own secrets (Flower's login, Redis's password), made once and kept private.

A secret file is created with mode 0600 in the same system call that creates
it, so no other user can read it even for a moment, and it is read back on
every later start so the stack keeps its credentials across restarts.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def stored_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept at `path`, made by `make()` and written there (0600) the first time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(make() + "\n")
    return path.read_text().strip()


def new_password() -> str:
    """Letters, digits, '-' and '_' only: it goes into redis:// URLs and Flower's login unquoted."""
    return secrets.token_urlsafe(18)
