"""Athena, in a compose project of its own, reaches the inference stack's Redis
over a network with a fixed name; an Athena on the host, over a loopback port.
The stack's jobs worker reaches Athena's PostgreSQL over Athena's network."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from athena_client.shared_redis.metrics import SIDE_DATABASE
from athena_inference.workers.reembedding.stores.postgres import CONNECTION_ENV

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
NETWORK = "athena-inference"
# Athena's own network, where its database is.
ATHENA_NETWORK = "athena"


def load(name: str) -> dict:
    return yaml.safe_load((COMPOSE / name).read_text())


@pytest.fixture(scope="module")
def stack() -> dict:
    return load("docker-compose.yml")


@pytest.fixture(scope="module")
def athena() -> dict:
    return load("athena.example.yml")


def network_key(project: dict, name: str = NETWORK) -> str:
    """The project's own key for the network named `name` (athena-inference unless told)."""
    [key] = [key for key, network in project["networks"].items() if (network or {}).get("name") == name]
    return key


def test_the_stack_declares_the_network_by_its_fixed_name_and_every_service_joins_it(stack):
    key = network_key(stack)
    assert not stack["networks"][key].get("external")
    for name, service in stack["services"].items():
        assert key in service["networks"], name


def test_athenas_example_joins_the_same_network_as_external_from_its_athena_service(athena):
    key = network_key(athena)
    assert athena["networks"][key]["external"] is True
    assert key in athena["services"]["athena"]["networks"]


def test_athenas_database_stays_on_athenas_own_network(athena):
    postgres = athena["services"]["postgres"]
    assert network_key(athena) not in postgres["networks"]
    assert postgres["networks"] == [network_key(athena, ATHENA_NETWORK)]
    assert set(postgres["networks"]) <= set(athena["services"]["athena"]["networks"])


def test_the_stack_creates_athenas_network_by_its_fixed_name_and_athena_joins_it_as_external(stack, athena):
    # The stack starts first, so it creates the network; Athena's project would
    # otherwise have to be up before the stack could start, and the other way round.
    assert not stack["networks"][network_key(stack, ATHENA_NETWORK)].get("external")
    assert athena["networks"][network_key(athena, ATHENA_NETWORK)]["external"] is True


def test_the_jobs_worker_and_no_other_service_of_the_stack_is_on_athenas_network(stack):
    key = network_key(stack, ATHENA_NETWORK)
    on_it = {name for name, service in stack["services"].items() if key in service["networks"]}
    assert on_it == {"jobs-worker"}


def test_the_jobs_workers_athena_connection_is_athenas_database_with_its_password(stack, athena):
    # `reembed start --connection athena` makes the jobs worker read ATHENA_POSTGRES_ATHENA.
    dsn = stack["services"]["jobs-worker"]["environment"][CONNECTION_ENV.format("ATHENA")]
    password_expression = re.search(r"\$\{[^}]*\}", dsn).group(0)
    url = urlsplit(dsn.replace(password_expression, "password"))
    postgres = athena["services"][url.hostname]
    assert postgres["image"].startswith("pgvector/pgvector:")
    assert network_key(athena, ATHENA_NETWORK) in postgres["networks"]
    assert url.scheme == "postgresql" and url.port == 5432
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path == "/" + postgres["environment"]["POSTGRES_DB"]
    assert password_expression == postgres["environment"]["POSTGRES_PASSWORD"]


def test_athenas_broker_host_is_the_stacks_redis_service(stack, athena):
    url = urlsplit(re.sub(r"\$\{[^}]*\}", "password", athena["services"]["athena"]["environment"]["ATHENA_BROKER_URL"]))
    assert url.scheme == "redis"
    assert url.hostname in stack["services"]
    assert stack["services"][url.hostname]["image"].startswith("redis:")
    assert url.port == 6379


def test_athenas_example_uses_the_stacks_broker_result_backend_and_dimension(stack, athena):
    ours = stack["services"]["embeddings-worker"]["environment"]
    theirs = athena["services"]["athena"]["environment"]
    assert theirs["ATHENA_BROKER_URL"] == ours["ATHENA_BROKER_URL"]
    assert theirs["ATHENA_RESULT_BACKEND"] == ours["ATHENA_RESULT_BACKEND"]


def test_athenas_monitor_reads_the_metrics_where_the_workers_write_them(stack, athena):
    ours = stack["services"]["embeddings-worker"]["environment"]
    theirs = athena["services"]["athena"]["environment"]
    # By its last path segment: the ${...:?message} in the URL is no URL syntax urlsplit could read.
    workers_write_to = ours.get("ATHENA_METRICS_URL") or ours["ATHENA_RESULT_BACKEND"].rsplit("/", 1)[0] + f"/{SIDE_DATABASE}"
    assert theirs["ATHENA_METRICS_URL"] == workers_write_to
    assert theirs["LLAMACPP_EMBEDDING_DIM"] == ours["LLAMACPP_EMBEDDING_DIM"] == "768"


def test_the_stack_publishes_no_redis_port(stack):
    assert "ports" not in stack["services"]["redis"]


def test_the_host_override_publishes_redis_on_loopback_only():
    override = load("docker-compose.host-redis.yml")
    assert override["services"].keys() == {"redis"}
    assert override["services"]["redis"].keys() == {"ports"}
    [published] = override["services"]["redis"]["ports"]
    ip, host_port, container_port = re.fullmatch(r"([^:]+):(\$\{[^}]*\}|\d+):(\d+)", published).groups()
    assert ip == "127.0.0.1"
    assert host_port == "${REDIS_HOST_PORT:-6380}"
    assert container_port == "6379"
