"""The embedded Redis's config file: password, persistence and memory bound, none of them on a command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.processes import (
    redis_argv,
    redis_config,
    redis_data_dir,
    redis_password,
    redis_password_file,
    write_redis_config,
)

BINARY = Path("/usr/bin/redis-server")
PASSWORD = "s3cret-Value-42"

pytestmark = pytest.mark.usefixtures("clean_settings_env")


@pytest.fixture
def settings(tmp_path):
    return load_settings(cache_dir=tmp_path, result_backend="redis://127.0.0.1:6390/1", redis_password=PASSWORD, redis_maxmemory_mb=256)


def config_lines(settings) -> dict[str, str]:
    text = redis_config(settings, PASSWORD)
    return dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_redis_is_started_with_its_config_file_as_the_only_argument(settings):
    argv = redis_argv(settings, BINARY)
    assert argv == [str(BINARY), str(redis_data_dir(settings) / "redis.conf")]


def test_the_password_is_in_the_config_file_not_the_command_line(settings):
    argv = redis_argv(settings, BINARY)
    assert not any(PASSWORD in arg for arg in argv)
    assert config_lines(settings)["requirepass"] == f'"{PASSWORD}"'
    assert f'requirepass "{PASSWORD}"' in Path(argv[1]).read_text()


def test_the_config_file_is_created_private_whatever_the_umask(settings):
    previous = os.umask(0)
    try:
        path = write_redis_config(settings, PASSWORD)
    finally:
        os.umask(previous)
    assert mode(path) == 0o600


def test_a_config_file_left_from_an_earlier_start_is_replaced_and_stays_private(settings):
    first = write_redis_config(settings, "old-password-1")
    first.chmod(0o644)
    again = write_redis_config(settings, PASSWORD)
    assert again == first and mode(again) == 0o600
    assert "old-password-1" not in again.read_text()


def test_the_data_folder_is_private(settings):
    write_redis_config(settings, PASSWORD)
    assert mode(redis_data_dir(settings)) == 0o700


def test_each_port_keeps_its_data_in_a_folder_of_its_own(settings, tmp_path):
    other = load_settings(cache_dir=tmp_path, result_backend="redis://127.0.0.1:6391/1")
    assert redis_data_dir(settings) == tmp_path / "redis" / "6390"
    assert redis_data_dir(other) == tmp_path / "redis" / "6391"


def test_redis_listens_where_the_result_backend_says(settings):
    lines = config_lines(settings)
    assert (lines["bind"], lines["port"]) == ("127.0.0.1", "6390")
    assert lines["dir"] == f'"{redis_data_dir(settings)}"'


def test_persistence_is_an_append_only_file_synced_every_second(settings):
    lines = config_lines(settings)
    assert (lines["appendonly"], lines["appendfsync"]) == ("yes", "everysec")


def test_maxmemory_is_the_setting_and_only_keys_that_expire_may_be_evicted(settings):
    lines = config_lines(settings)
    assert lines["maxmemory"] == "256mb"
    assert lines["maxmemory-policy"] == "volatile-lru"


def test_a_password_with_quotes_backslashes_or_newlines_stays_one_value_on_one_line(settings):
    text = redis_config(settings, 'a"b\\c\nrequirepass x')
    [line] = [line for line in text.splitlines() if line.startswith("requirepass")]
    assert line == 'requirepass "a\\"b\\\\c\\nrequirepass x"'


def test_athena_redis_password_is_the_password_when_set(settings):
    assert redis_password(settings) == PASSWORD
    assert not redis_password_file(settings).exists()


def test_without_athena_redis_password_one_is_made_once_and_kept_private(tmp_path):
    settings = load_settings(cache_dir=tmp_path)
    made = redis_password(settings)
    assert len(made) >= 20
    assert redis_password(settings) == made
    assert redis_password_file(settings).read_text().strip() == made
    assert mode(redis_password_file(settings)) == 0o600
