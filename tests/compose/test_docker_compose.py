"""The production compose files, checked without a Docker engine: parsed, and
compared with the Procfile, the settings and the production model manifest."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from athena_client.routes import Queue
from athena_inference.config.settings import Settings, env_name, load_settings
from athena_inference.workers.ops.model_download import PRODUCTION_MODELS
from athena_inference.config.servers import MODEL_ALIASES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SERVER_OF = {Queue.EMBEDDINGS: "embeddings-server", Queue.REASONING: "reasoning-server", Queue.EMBEDDINGS_BULK: "embeddings-bulk-server"}
URL_SETTING = {Queue.EMBEDDINGS: "LLAMACPP_EMBEDDINGS_URL", Queue.REASONING: "LLAMACPP_REASONING_URL", Queue.EMBEDDINGS_BULK: "ATHENA_EMBEDDINGS_BULK_URL"}
SLOTS_SETTING = {Queue.EMBEDDINGS: "ATHENA_EMBEDDINGS_SLOTS", Queue.REASONING: "ATHENA_REASONING_SLOTS", Queue.EMBEDDINGS_BULK: "ATHENA_EMBEDDINGS_BULK_SLOTS"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def gpu() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.gpu.yml").read_text())


def procfile() -> dict[str, str]:
    entries = [line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    return {name.strip(): command.strip() for name, command in entries}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_worker_flower_and_exporter_runs_the_procfile_command(compose):
    for name, command in procfile().items():
        if name.endswith("-worker") or name in ("flower", "exporter"):
            assert shlex.join(compose["services"][name]["command"]) == command, name


def test_every_queue_has_a_worker_service(compose):
    assert {f"{q.value}-worker" for q in Queue} <= set(compose["services"])


@pytest.mark.parametrize("queue", list(SERVER_OF))
def test_a_worker_waits_for_its_healthy_server_at_the_address_it_listens_on(compose, queue):
    services = compose["services"]
    worker, server = services[f"{queue.value}-worker"], services[SERVER_OF[queue]]
    assert worker["depends_on"][SERVER_OF[queue]] == {"condition": "service_healthy"}
    port = flag(server["command"], "--port")
    assert worker["environment"][URL_SETTING[queue]] == f"http://{SERVER_OF[queue]}:{port}"
    assert server["healthcheck"]["test"] == ["CMD", "curl", "-fsS", f"http://localhost:{port}/health"]
    assert worker["environment"][SLOTS_SETTING[queue]] == flag(server["command"], "-np")


def test_servers_use_the_official_llama_cpp_image_and_the_production_models(compose):
    files = {f.path for spec in PRODUCTION_MODELS for f in spec.files}
    for name in SERVER_OF.values():
        server = compose["services"][name]
        assert server["image"] == "ghcr.io/ggml-org/llama.cpp:server"
        model = flag(server["command"], "-m")
        assert model.removeprefix("/models/") in files
        # A split GGUF is loaded by its first part.
        assert "-of-" not in model or "-00001-of-" in model


def test_embedding_servers_take_inputs_as_long_as_the_workers_allow(compose):
    env = compose["services"]["embeddings-worker"]["environment"]
    for name in ("embeddings-server", "embeddings-bulk-server"):
        command = compose["services"][name]["command"]
        assert flag(command, "-b") == flag(command, "-ub") == env["ATHENA_EMBEDDING_MAX_TOKENS"]
        assert "--embedding" in command
    assert env["LLAMACPP_EMBEDDING_DIM"] == "768"
    same_model = {flag(compose["services"][n]["command"], "--alias") for n in ("embeddings-server", "embeddings-bulk-server")}
    assert len(same_model) == 1


def test_every_setting_in_the_file_exists_and_its_value_is_valid(compose):
    known = {env_name(field) for field in Settings.model_fields}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if not name.endswith(("-worker", "flower", "exporter")):
            continue
        # A stand-in secret that is no placeholder: the settings refuse those.
        settings_env = {k: re.sub(r"\$\{([A-Z_]+)[^}]*\}", "user:not-a-placeholder", v) for k, v in env.items()}
        assert set(settings_env) <= known, name
        aliases = {field: settings_env[env_name(field)] for field in Settings.model_fields if env_name(field) in settings_env}
        load_settings(**aliases)


def test_redis_keeps_its_data(compose, start_redis):
    # The persistence options moved from redis-server's command line into the
    # config file its entry script writes.
    redis = compose["services"]["redis"]
    config = start_redis("a-real-password").config.splitlines()
    assert "appendonly yes" in config and "appendfsync everysec" in config
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_secrets_come_from_the_env_file_and_are_required(compose):
    text = (COMPOSE / "docker-compose.yml").read_text()
    assert "${REDIS_PASSWORD:?" in text and "${FLOWER_BASIC_AUTH:?" in text
    example = (COMPOSE / ".env.example").read_text()
    every_file = "".join(path.read_text() for path in sorted(COMPOSE.glob("*.yml")))
    for variable in set(re.findall(r"\$\{([A-Z_]+)", every_file)):
        assert re.search(rf"^#? ?{variable}=", example, re.MULTILINE), f"{variable} missing from .env.example"
    assert "compose/.env" in (ROOT / ".gitignore").read_text()
    for name, service in compose["services"].items():
        if name.endswith("-worker"):
            assert service["env_file"] == [".env"]


def test_flower_has_credentials_and_listens_for_the_published_port(compose):
    flower = compose["services"]["flower"]
    assert flower["environment"]["ATHENA_FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["environment"]["ATHENA_FLOWER_ADDRESS"] == "0.0.0.0"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]


def test_the_exporter_listens_for_the_port_published_on_the_hosts_loopback_only(compose):
    exporter = compose["services"]["exporter"]
    assert exporter["environment"]["ATHENA_EXPORTER_ADDRESS"] == "0.0.0.0"
    assert exporter["ports"] == ["127.0.0.1:9808:9808"]


def test_outside_a_container_the_exporter_binds_to_loopback_unless_told_otherwise(clean_settings_env):
    assert load_settings().exporter_address == "127.0.0.1"


def test_every_worker_has_a_healthcheck_on_its_own_queue(compose):
    for queue in Queue:
        check = compose["services"][f"{queue.value}-worker"]["healthcheck"]["test"]
        assert check == ["CMD", "athena-inference", "health", "--queue", queue.value]


def test_the_gpu_file_offloads_every_server_and_changes_nothing_else(compose, gpu):
    assert set(gpu["services"]) == set(SERVER_OF.values())
    for name, override in gpu["services"].items():
        assert override["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
        assert override["command"] == compose["services"][name]["command"] + ["-ngl", "999"]
        [device] = override["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_the_alias_of_the_embedded_default_is_not_what_production_serves():
    # Vectors carry their model's name; the two must never be mistaken for each other.
    assert MODEL_ALIASES[Queue.EMBEDDINGS] != "nomic-embed-text-v1.5"
