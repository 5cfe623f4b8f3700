"""The house plan, checked: which room may import which.

    client/contract/     the contract both sides import: pydantic and the standard library only
    client/shared_redis/ the Redis both sides share (its clients, kombu's transport, the
                         records kept there): the contract, redis, kombu
    client/              the client's transport over them: imports nothing of the workers
    config/    what can be set
    tasks/     what can be asked: imports config, the seams and the jobs runner
    workers/   seams, one per external system: never import tasks/ or workers/ops/
    workers/reembedding/  the job runner with its stores and lease
    workers/ops/          operator commands: may import any room but tasks/
    config/, tasks/ and workers/ import from the client only its contract and
    shared_redis; the callers among them (the operator commands, the job runner
    sending batches to the bulk lane) use the client's transport as any caller does
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


CLIENT_ROOMS = ("athena_client.contract", "athena_client.shared_redis")
# Callers of the queues, which send tasks and wait on results as any client does.
CALLERS = ("workers/ops/", "workers/reembedding/lane.py", "workers/reembedding/runner.py")


def client_transport_imports(folder: str) -> dict[str, list[str]]:
    return {
        path: sorted(name for name in names if name.startswith("athena_client") and not name.startswith(CLIENT_ROOMS))
        for path, names in imports_of(folder).items()
        if not path.startswith(CALLERS) and any(name.startswith("athena_client") and not name.startswith(CLIENT_ROOMS) for name in names)
    }


@pytest.mark.parametrize("folder", ["config", "tasks", "workers"])
def test_the_worker_side_imports_only_the_contract_and_the_shared_redis(folder):
    assert client_transport_imports(folder) == {}


def test_the_contract_imports_only_pydantic_the_standard_library_and_itself():
    allowed = set(sys.stdlib_module_names) | {"pydantic", "athena_client.contract"}
    found = {
        path: sorted(name for name in names if name.split(".")[0] not in allowed and not name.startswith("athena_client.contract"))
        for path, names in imports_of("client/contract").items()
    }
    assert {path: names for path, names in found.items() if names} == {}


def test_the_shared_redis_never_imports_the_clients_transport():
    found = {
        path: sorted(name for name in names if name.startswith("athena_client") and not name.startswith(CLIENT_ROOMS))
        for path, names in imports_of("client/shared_redis").items()
    }
    assert {path: names for path, names in found.items() if names} == {}


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


CONTRACT_MODULES = sorted(f"athena_client.contract.{path.stem}" for path in (ROOT / "client" / "contract").glob("[!_]*.py"))
# Athena's documented import paths, each the contract module of the same name.
DOCUMENTED_PATHS = ["athena_client.errors", "athena_client.payloads", "athena_client.consolidation", "athena_client.jobs"]


@pytest.mark.parametrize("module", CONTRACT_MODULES + DOCUMENTED_PATHS)
def test_the_contract_loads_without_celery_redis_or_httpx(module):
    probe = f"import sys, {module}; print(sorted(m for m in ('celery', 'redis', 'kombu', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_client_class_is_still_one_import_away():
    probe = "from athena_client import AthenaClient, AsyncAthenaClient; print(AthenaClient.__name__, AsyncAthenaClient.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AthenaClient", "AsyncAthenaClient"]


@pytest.mark.parametrize("module", DOCUMENTED_PATHS)
def test_athenas_documented_import_paths_give_the_contracts_own_names(module):
    import importlib

    documented = importlib.import_module(module)
    contract = importlib.import_module(module.replace("athena_client.", "athena_client.contract."))
    defined = [name for name in vars(contract) if not name.startswith("_") and getattr(getattr(contract, name), "__module__", None) == contract.__name__]
    public = set(getattr(contract, "__all__", defined))
    assert public and all(getattr(documented, name) is getattr(contract, name) for name in public)
