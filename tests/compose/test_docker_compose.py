"""The production compose files, checked without a Docker engine: parsed, and
compared with the Procfile, the settings, the command lines the stack's own
launcher builds from them, and the production model manifest."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from athena_client.contract.routes import Queue
from athena_inference.config.registry import LANES, lane, server_lanes
from athena_inference.config.settings import Settings, env_name, load_settings
from athena_inference.workers.ops.model_download import PRODUCTION_MODELS
from athena_inference.workers.ops.processes import llama_server_argv
from athena_inference.workers.reembedding.stores.postgres import CONNECTION_ENV
from athena_inference.config.servers import EMBEDDING_QUEUES, MODEL_ALIASES, server_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SERVER_OF = {row.queue: row.server_process for row in server_lanes()}
URL_SETTING = {row.queue: row.url_variable for row in server_lanes()}
SLOTS_SETTING = {row.queue: f"ATHENA_{str(row.settings_key).upper()}_SLOTS" for row in server_lanes()}
# The workers that embed, or hand texts to a lane that does: each must add nomic's prefixes.
EMBEDDING_WORKERS = (*(row.worker_process for row in server_lanes() if row.embeds), "consolidation-worker", "jobs-worker")
EMBEDDING_SERVERS = [row.server_process for row in server_lanes() if row.embeds]
NOMIC = "nomic-embed-text-v1.5"
# The context nomic's GGUF is served with when llama.cpp is given no RoPE scaling
# flags (its model card: 2048 by default, 8192 with YaRN scaling).
NOMIC_GGUF_CONTEXT = 2048
# The flags that decide what a server accepts (slots, batch sizes, context, pooling) and what it logs.
SHAPE_FLAGS = ("-np", "-b", "-ub", "-c", "--pooling", "--log-verbosity")
LLAMA_CPP_IMAGE = re.compile(r"ghcr\.io/ggml-org/llama\.cpp:server(?P<cuda>-cuda)?-b(?P<build>\d+)")


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


def shape(command: list[str]) -> dict[str, str]:
    return {name: flag(command, name) for name in SHAPE_FLAGS if name in command}


def worker_settings(service: dict) -> Settings:
    """The settings a worker service starts with, its secrets stood in for by values that are no placeholder."""
    known = {env_name(field) for field in Settings.model_fields}
    env = {k: re.sub(r"\$\{([A-Z_]+)[^}]*\}", "user:not-a-placeholder", v) for k, v in service["environment"].items() if k in known}
    return load_settings(**{field: env[env_name(field)] for field in Settings.model_fields if env_name(field) in env})


def test_every_worker_flower_and_exporter_runs_the_procfile_command(compose):
    for name, command in procfile().items():
        if name.endswith("-worker") or name in ("flower", "exporter"):
            assert shlex.join(compose["services"][name]["command"]) == command, name


def test_every_queue_has_a_worker_service_running_the_registrys_command(compose):
    for row in LANES:
        assert compose["services"][row.worker_process]["command"] == ["athena-inference", "worker", row.queue.value]


@pytest.mark.parametrize("queue", list(SERVER_OF))
def test_a_worker_waits_for_its_healthy_server_at_the_address_it_listens_on(compose, queue):
    services = compose["services"]
    worker, server = services[lane(queue).worker_process], services[SERVER_OF[queue]]
    assert worker["depends_on"][SERVER_OF[queue]] == {"condition": "service_healthy"}
    port = flag(server["command"], "--port")
    assert worker["environment"][URL_SETTING[queue]] == f"http://{SERVER_OF[queue]}:{port}"
    assert server["healthcheck"]["test"] == ["CMD", "curl", "-fsS", f"http://localhost:{port}/health"]
    # The worker never has more requests out than the server has slots: the backlog waits in the broker.
    assert int(worker["environment"][SLOTS_SETTING[queue]]) <= int(flag(server["command"], "-np"))


def test_servers_use_the_official_llama_cpp_image_and_the_production_models(compose):
    files = {f.path for spec in PRODUCTION_MODELS for f in spec.files}
    for name in SERVER_OF.values():
        server = compose["services"][name]
        found = LLAMA_CPP_IMAGE.fullmatch(server["image"])
        assert found and not found["cuda"], server["image"]
        model = flag(server["command"], "-m")
        assert model.removeprefix("/models/") in files
        # A split GGUF is loaded by its first part.
        assert "-of-" not in model or "-00001-of-" in model


def test_embedding_servers_take_inputs_as_long_as_the_workers_allow(compose):
    env = compose["services"]["embeddings-worker"]["environment"]
    for name in EMBEDDING_SERVERS:
        command = compose["services"][name]["command"]
        assert flag(command, "-b") == flag(command, "-ub") == env["ATHENA_EMBEDDING_MAX_TOKENS"]
        assert "--embedding" in command
    assert env["LLAMACPP_EMBEDDING_DIM"] == "768"
    same_model = {flag(compose["services"][n]["command"], "--alias") for n in EMBEDDING_SERVERS}
    assert len(same_model) == 1


def test_every_setting_in_the_file_exists_and_its_value_is_valid(compose, clean_settings_env):
    # Besides the settings: PostgreSQL connections that re-embedding jobs name (ATHENA_POSTGRES_<NAME>).
    connection = re.compile(CONNECTION_ENV.format("[A-Z0-9_]+"))
    known = {env_name(field) for field in Settings.model_fields}
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if not name.endswith(("-worker", "flower", "exporter")):
            continue
        # A stand-in secret that is no placeholder: the settings refuse those.
        settings_env = {k: re.sub(r"\$\{([A-Z_]+)[^}]*\}", "user:not-a-placeholder", v) for k, v in env.items()}
        settings_env = {k: v for k, v in settings_env.items() if not connection.fullmatch(k)}
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
    for row in LANES:
        check = compose["services"][row.worker_process]["healthcheck"]["test"]
        assert check == ["CMD", "athena-inference", "health", "--queue", row.queue.value]


def test_the_gpu_file_offloads_every_server_and_changes_nothing_else(compose, gpu):
    assert set(gpu["services"]) == set(SERVER_OF.values())
    for name, override in gpu["services"].items():
        assert set(override) == {"image", "command", "deploy"}
        found = LLAMA_CPP_IMAGE.fullmatch(override["image"])
        assert found and found["cuda"], override["image"]
        assert override["command"] == compose["services"][name]["command"] + ["-ngl", "999"]
        [device] = override["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_each_server_gets_exactly_one_gpu_its_own_by_default(gpu):
    # `count: all` would give every container every GPU, and llama.cpp would split each model over all of them.
    chosen = {}
    for name, override in gpu["services"].items():
        [device] = override["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device, name
        [gpu_id] = device["device_ids"]
        variable, default = re.fullmatch(r"\$\{([A-Z_]+_GPU):-(\d+)\}", gpu_id).groups()
        chosen[name] = (variable, default)
    assert len({variable for variable, _ in chosen.values()}) == len(chosen), chosen
    assert sorted(default for _, default in chosen.values()) == [str(i) for i in range(len(chosen))], chosen


def test_the_cpu_and_cuda_servers_are_one_fixed_llama_cpp_build(compose, gpu):
    images = {compose["services"][name]["image"] for name in SERVER_OF.values()}
    images |= {override["image"] for override in gpu["services"].values()}
    builds = {LLAMA_CPP_IMAGE.fullmatch(image)["build"] for image in images}
    assert len(images) == 2 and len(builds) == 1, images


@pytest.mark.parametrize("path", sorted(COMPOSE.glob("*.yml")), ids=lambda path: path.name)
def test_every_image_pulled_names_a_version_not_a_moving_tag(path):
    for name, service in (yaml.safe_load(path.read_text()).get("services") or {}).items():
        image = service.get("image")
        # Built here from compose/Dockerfile, or Athena's own image (a placeholder for Athena's repository).
        if image is None or "build" in service or (path.name == "athena.example.yml" and name == "athena"):
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{path.name}:{name}: {image} has no tag"
        assert tag not in {"latest", "server", "server-cuda", "full", "light"} and re.search(r"\d", tag), f"{path.name}:{name}: {image}"


def test_the_production_models_are_pinned_to_a_commit_and_each_file_to_its_hash():
    for spec in PRODUCTION_MODELS:
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), f"{spec.name}: revision {spec.revision!r} is not a commit"
        for file in spec.files:
            assert file.sha256 and file.size, f"{spec.name}: {file.path} has no pinned SHA-256 and size"


@pytest.mark.parametrize("name", EMBEDDING_WORKERS)
def test_workers_that_embed_run_with_nomics_profile_on_every_embedding_lane(compose, name, clean_settings_env):
    env = compose["services"][name]["environment"]
    assert env["ATHENA_EMBEDDING_PROFILE"] == NOMIC and env["LLAMACPP_EMBEDDING_DIM"] == "768"
    settings = worker_settings(compose["services"][name])
    for queue in EMBEDDING_QUEUES:
        server = server_config(queue, settings)
        assert server.profile.name == NOMIC and server.dimension == 768, queue
        assert (server.profile.document_prefix, server.profile.query_prefix) == ("search_document: ", "search_query: ")


@pytest.mark.parametrize("queue", list(SERVER_OF))
def test_each_server_runs_the_command_the_stacks_launcher_builds_from_its_workers_settings(compose, queue, clean_settings_env):
    # `athena-inference serve` builds llama-server's command from the same settings
    # the workers read; the compose file writes it out, so the two must agree.
    command = compose["services"][SERVER_OF[queue]]["command"]
    settings = worker_settings(compose["services"][lane(queue).worker_process])
    expected = llama_server_argv(queue, settings, Path("llama-server"), Path(flag(command, "-m")))
    assert shape(command) == shape(expected)
    assert ("--embedding" in command) == ("--embedding" in expected)


@pytest.mark.parametrize("name", EMBEDDING_SERVERS)
def test_an_embedding_server_serves_the_profiles_model_and_every_slot_holds_the_longest_input(compose, name, clean_settings_env):
    command = compose["services"][name]["command"]
    settings = worker_settings(compose["services"]["embeddings-worker"])
    assert flag(command, "--alias") == settings.embedding_profile == NOMIC
    longest = settings.embedding_max_tokens
    assert int(flag(command, "-c")) // int(flag(command, "-np")) >= longest
    # No RoPE scaling flag is given, so no input may be longer than the GGUF's own context.
    assert "--rope-scaling" not in command and longest <= NOMIC_GGUF_CONTEXT


def test_the_alias_of_the_embedded_default_is_not_what_production_serves():
    # Vectors carry their model's name; the two must never be mistaken for each other.
    assert MODEL_ALIASES[Queue.EMBEDDINGS] != "nomic-embed-text-v1.5"


def test_the_operations_guide_names_what_the_files_pin(compose, gpu):
    guide = (ROOT / "docs" / "operations.md").read_text()
    for image in {compose["services"][name]["image"] for name in SERVER_OF.values()} | {o["image"] for o in gpu["services"].values()}:
        assert f"`llama.cpp:{image.rpartition(':')[2]}`" in guide, image
    for spec in PRODUCTION_MODELS:
        assert f"`{spec.repo}` at `{spec.revision}`" in guide, spec.name
    for override in gpu["services"].values():
        [device] = override["deploy"]["resources"]["reservations"]["devices"]
        variable, default = re.fullmatch(r"\$\{([A-Z_]+):-(\d+)\}", device["device_ids"][0]).groups()
        assert f"| `{variable}` | `{default}` |" in guide, variable
