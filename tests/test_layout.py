"""The house plan, checked: which room may import which.

    client/    the contract and the client: imports nothing of the workers
    config/    what can be set
    tasks/     what can be asked: imports config, the seams and the jobs runner
    workers/   seams, one per external system: never import tasks/ or workers/ops/
    workers/reembedding/  the job runner with its stores and lease
    workers/ops/          operator commands: may import any room but tasks/
    bench/ and tests/     import nothing of each other: what both need (the local
                          stack runner, sample payloads) is in workers/ops/
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...], *, only=lambda path: True) -> dict[str, list[str]]:
    return {
        path: sorted(name for name in names if name.startswith(forbidden))
        for path, names in imports_of(folder).items()
        if only(path) and any(name.startswith(forbidden) for name in names)
    }


def test_the_client_imports_nothing_of_the_workers():
    assert offenders("client", ("athena_inference",)) == {}


def test_nothing_in_workers_imports_tasks():
    assert offenders("workers", ("athena_inference.tasks",)) == {}


def test_seams_import_neither_operations_nor_jobs():
    top_level = lambda path: path.count("/") == 1  # noqa: E731 - workers/<seam>.py
    assert offenders("workers", ("athena_inference.workers.ops", "athena_inference.workers.reembedding"), only=top_level) == {}


def test_tasks_and_jobs_never_import_operator_commands():
    assert offenders("tasks", ("athena_inference.workers.ops",)) == {}
    assert offenders("workers/reembedding", ("athena_inference.workers.ops",)) == {}


def test_the_benches_and_the_tests_import_nothing_of_each_other():
    def of(package: str):
        return lambda name: name == package or name.startswith(package + ".")

    for folder, other in (("bench", "tests"), ("tests", "bench")):
        named = {path: sorted(filter(of(other), names)) for path, names in imports_of(folder).items()}
        assert {path: names for path, names in named.items() if names} == {}, folder


@pytest.mark.parametrize("module", ["athena_client.payloads", "athena_client.consolidation", "athena_client.jobs", "athena_client.health"])
def test_the_payload_types_load_without_celery_or_redis(module):
    probe = f"import sys, {module}; print(sorted(m for m in ('celery', 'redis', 'kombu') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_client_class_is_still_one_import_away():
    probe = "from athena_client import AthenaClient, AsyncAthenaClient; print(AthenaClient.__name__, AsyncAthenaClient.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AthenaClient", "AsyncAthenaClient"]
