"""Secrets in the compose files: required at interpolation, on no command line,
and Redis's password refused when it is a placeholder."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from athena_inference.config.settings import PLACEHOLDER_SECRETS

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
FILES = sorted(COMPOSE.glob("*.yml"))
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH")
PLACEHOLDERS = ["change-me", "changeme", "change_me", "password", "secret", "redis", "example", "placeholder", "xxx", "todo"]


def secret_values_of_the_example() -> set[str]:
    pairs = re.findall(r"^([A-Z_]+)=(.+)$", (COMPOSE / ".env.example").read_text(), re.MULTILINE)
    return {value for name, value in pairs if SECRET.search(name)}


def command_lines() -> list[tuple[str, list[str]]]:
    """Every service's command and healthcheck test, in every compose file, as words."""
    found = []
    for path in FILES:
        for name, service in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            for line in (service.get("command"), (service.get("healthcheck") or {}).get("test")):
                if line is None:
                    continue
                words = shlex.split(line) if isinstance(line, str) else list(line)
                if words[:1] == ["CMD-SHELL"]:
                    words = shlex.split(" ".join(words[1:]))
                found.append((f"{path.name}:{name}", words))
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_secret_reference_is_required_with_a_message_naming_the_env_file(path):
    text = path.read_text()
    for name, rest in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text):
        if SECRET.search(name):
            assert rest.startswith(":?") and "compose/.env" in rest, f"${{{name}{rest}}}"
    # A bare $NAME is interpolated too, and cannot be required.
    assert not [name for name in re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", text) if SECRET.search(name)]


def test_the_secret_scan_sees_every_secret():
    text = "".join(path.read_text() for path in FILES)
    names = {name for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text) if SECRET.search(name)}
    assert names == {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD"}


def test_no_command_or_healthcheck_carries_a_password():
    values = secret_values_of_the_example()
    assert values, "the scan needs the example's placeholder secrets"
    for where, words in command_lines():
        assert "-a" not in words and not {"--requirepass", "requirepass"} & set(words), where
        joined = " ".join(words)
        assert not [name for name in re.findall(r"\$+\{?([A-Za-z_][A-Za-z0-9_]*)", joined) if SECRET.search(name)], where
        assert not any(value in joined for value in values), where
        assert "redis://" not in joined, where


def test_redis_runs_the_entry_script_mounted_read_only_and_checks_health_through_rediscli_auth():
    redis = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]["redis"]
    [script] = redis["command"][1:]
    assert redis["command"][0] == "sh"
    assert f"./redis-entrypoint.sh:{script}:ro" in redis["volumes"]
    assert redis["environment"]["REDISCLI_AUTH"] == redis["environment"]["REDIS_PASSWORD"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert redis["healthcheck"]["test"][0] == "CMD-SHELL" and "redis-cli ping" in redis["healthcheck"]["test"][1]


def test_redis_refuses_the_same_placeholders_as_the_workers_settings():
    assert set(PLACEHOLDERS) == PLACEHOLDER_SECRETS


@pytest.mark.parametrize("password", ["", *PLACEHOLDERS, "CHANGE-ME", "Password", "XXX", None], ids=repr)
def test_the_entry_script_refuses_an_empty_or_placeholder_password(start_redis, password):
    started = start_redis(password)
    assert started.returncode != 0
    assert started.args is None, "redis-server must not start"
    [message] = started.stderr.splitlines()
    assert "REDIS_PASSWORD" in message and "compose/.env" in message


def test_the_entry_script_gives_redis_server_only_a_config_path(start_redis, tmp_path):
    started = start_redis("s3cret-Value-42")
    assert started.returncode == 0, started.stderr
    assert started.args == [str(tmp_path / "redis.conf")]
    assert not any("s3cret-Value-42" in arg for arg in started.args)


def test_the_config_file_is_private_and_holds_the_password(start_redis):
    started = start_redis("s3cret-Value-42")
    assert started.mode == "600"
    assert 'requirepass "s3cret-Value-42"' in started.config.splitlines()


def test_a_restart_replaces_the_config_left_by_the_last_start(start_redis, tmp_path):
    # A restarted container keeps its /tmp; the old file may be readable by others.
    left = tmp_path / "redis.conf"
    left.write_text('requirepass "old"\n')
    left.chmod(0o644)
    started = start_redis("s3cret-Value-43")
    assert started.returncode == 0, started.stderr
    assert started.mode == "600"
    assert 'requirepass "old"' not in started.config and 'requirepass "s3cret-Value-43"' in started.config


def test_a_password_with_quotes_spaces_and_backslashes_stays_one_value(start_redis):
    started = start_redis('a "b\\c d')
    assert 'requirepass "a \\"b\\\\c d"' in started.config.splitlines()


@pytest.mark.integration
@pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-cli")), reason="needs redis-server and redis-cli")
def test_a_real_redis_reads_the_config_and_asks_for_that_password(start_redis, tmp_path):
    password = 'a "b\\c d$x'
    config = start_redis(password).config
    (tmp_path / "real.conf").write_text(config)
    socket = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", str(tmp_path / "real.conf"), "--port", "0", "--unixsocket", str(socket), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def ping(auth: str) -> str:
            command = [shutil.which("redis-cli"), "-s", str(socket), "ping"]
            return subprocess.run(command, env={"REDISCLI_AUTH": auth}, capture_output=True, text=True, timeout=10).stdout

        assert ping(password).strip() == "PONG"
        assert "PONG" not in ping("wrong")
    finally:
        server.terminate()
        server.wait(timeout=10)
