"""Settings / load_settings: defaults, Athena's env names, and refusals that name the variable."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from athena_client.errors import ConfigurationError
from athena_inference.config.settings import env_name, load_settings


pytestmark = pytest.mark.usefixtures("clean_settings_env")


# --- defaults ---


def test_defaults_describe_the_embedded_stack():
    settings = load_settings()
    assert settings.embeddings_url == "http://127.0.0.1:8001"
    assert settings.reasoning_url == "http://127.0.0.1:8002"
    assert settings.embedding_dim == 384
    assert settings.n_threads == 1
    assert settings.embeddings_slots == 2
    assert settings.reasoning_slots == 1
    assert settings.embedding_max_tokens == 512
    assert settings.broker_url == "redis://127.0.0.1:6380/0"
    assert settings.result_backend == "redis://127.0.0.1:6380/1"
    assert settings.retry_attempts == 2
    assert (settings.embed_retry_budget_s, settings.reason_retry_budget_s, settings.max_deliveries) == (90, 300, 3)
    assert settings.visibility_timeout_s == 7200
    assert settings.flower_basic_auth is None


def test_default_visibility_timeout_outlasts_every_default_time_limit():
    settings = load_settings()
    longest = max(
        settings.embed_time_limit_s,
        settings.reason_time_limit_s,
        settings.compression_time_limit_s,
        settings.consolidation_time_limit_s,
    )
    assert settings.visibility_timeout_s > longest


def test_metrics_and_caches_fall_back_to_the_result_backends_redis_in_a_database_of_their_own():
    settings = load_settings(result_backend="redis://:pw@example:6379/3")
    assert settings.metrics_url is None
    assert settings.metrics_redis_url == "redis://:pw@example:6379/2"
    assert settings.cache_redis_url == "redis://:pw@example:6379/2"


def test_metrics_url_wins_over_result_backend_when_set(monkeypatch):
    monkeypatch.setenv("ATHENA_METRICS_URL", "redis://metrics:6379/5")
    assert load_settings().metrics_redis_url == "redis://metrics:6379/5"


def test_settings_are_frozen():
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.embedding_dim = 768


# --- Athena's env names ---


def test_llamacpp_env_names_are_read(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDINGS_URL", "http://embed.internal:9001")
    monkeypatch.setenv("LLAMACPP_REASONING_URL", "https://reason.internal:9002")
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "768")
    monkeypatch.setenv("LLAMACPP_N_THREADS", "4")
    settings = load_settings()
    assert settings.embeddings_url == "http://embed.internal:9001"
    assert settings.reasoning_url == "https://reason.internal:9002"
    assert settings.embedding_dim == 768
    assert settings.n_threads == 4


def test_athena_prefixed_env_names_are_read(monkeypatch):
    monkeypatch.setenv("ATHENA_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("ATHENA_EMBEDDINGS_SLOTS", "4")
    monkeypatch.setenv("ATHENA_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    settings = load_settings()
    assert settings.retry_attempts == 3
    assert settings.embeddings_slots == 4
    assert settings.broker_url == "amqp://guest:guest@rabbit:5672//"


def test_server_url_trailing_slash_is_stripped(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDINGS_URL", "http://embed.internal:9001/")
    assert load_settings().embeddings_url == "http://embed.internal:9001"


def test_path_settings_expand_the_home_directory(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDINGS_MODEL_PATH", "~/models/embed.gguf")
    path = load_settings().embeddings_model_path
    assert path == Path("~/models/embed.gguf").expanduser()
    assert "~" not in str(path)


def test_env_name_gives_athena_name_for_aliased_fields_and_prefixed_name_otherwise():
    assert env_name("embeddings_url") == "LLAMACPP_EMBEDDINGS_URL"
    assert env_name("embedding_dim") == "LLAMACPP_EMBEDDING_DIM"
    assert env_name("retry_attempts") == "ATHENA_RETRY_ATTEMPTS"
    assert env_name("visibility_timeout_s") == "ATHENA_VISIBILITY_TIMEOUT_S"


# --- refusals name the variable ---


def test_out_of_range_retry_attempts_names_the_env_variable(monkeypatch):
    monkeypatch.setenv("ATHENA_RETRY_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError, match="ATHENA_RETRY_ATTEMPTS"):
        load_settings()


def test_non_integer_retry_attempts_names_the_env_variable(monkeypatch):
    monkeypatch.setenv("ATHENA_RETRY_ATTEMPTS", "many")
    with pytest.raises(ConfigurationError, match="ATHENA_RETRY_ATTEMPTS"):
        load_settings()


def test_non_integer_embedding_dim_names_the_llamacpp_env_variable(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "abc")
    with pytest.raises(ConfigurationError, match="LLAMACPP_EMBEDDING_DIM"):
        load_settings()


def test_out_of_range_embedding_dim_names_the_llamacpp_env_variable(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "0")
    with pytest.raises(ConfigurationError, match="LLAMACPP_EMBEDDING_DIM"):
        load_settings()


def test_non_http_embeddings_url_names_the_llamacpp_env_variable(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDINGS_URL", "ftp://embed.internal:9001")
    with pytest.raises(ConfigurationError, match="LLAMACPP_EMBEDDINGS_URL"):
        load_settings()


def test_out_of_range_override_names_the_env_variable():
    with pytest.raises(ConfigurationError, match="LLAMACPP_EMBEDDING_DIM"):
        load_settings(embedding_dim=0)


def test_every_bad_variable_is_named_in_one_message(monkeypatch):
    monkeypatch.setenv("ATHENA_RETRY_ATTEMPTS", "0")
    monkeypatch.setenv("ATHENA_EMBEDDINGS_SLOTS", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "ATHENA_RETRY_ATTEMPTS" in str(caught.value)
    assert "ATHENA_EMBEDDINGS_SLOTS" in str(caught.value)


def test_visibility_timeout_equal_to_longest_time_limit_is_refused(monkeypatch):
    monkeypatch.setenv("ATHENA_CONSOLIDATION_TIME_LIMIT_S", "1800")
    monkeypatch.setenv("ATHENA_VISIBILITY_TIMEOUT_S", "1800")
    with pytest.raises(ConfigurationError, match="ATHENA_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_visibility_timeout_below_a_raised_time_limit_is_refused(monkeypatch):
    monkeypatch.setenv("ATHENA_REASON_TIME_LIMIT_S", "9000")
    with pytest.raises(ConfigurationError, match="ATHENA_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_visibility_timeout_just_above_longest_time_limit_is_accepted(monkeypatch):
    monkeypatch.setenv("ATHENA_VISIBILITY_TIMEOUT_S", "1801")
    assert load_settings().visibility_timeout_s == 1801


def test_backoff_max_below_backoff_is_refused(monkeypatch):
    monkeypatch.setenv("ATHENA_RETRY_BACKOFF_S", "2")
    monkeypatch.setenv("ATHENA_RETRY_BACKOFF_MAX_S", "1")
    with pytest.raises(ConfigurationError, match="ATHENA_RETRY_BACKOFF_MAX_S"):
        load_settings()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6380/0", "127.0.0.1:6380", "sqs://queue"])
def test_broker_url_with_unsupported_scheme_is_refused(monkeypatch, url):
    monkeypatch.setenv("ATHENA_BROKER_URL", url)
    with pytest.raises(ConfigurationError, match="ATHENA_BROKER_URL"):
        load_settings()


def test_result_backend_must_be_redis(monkeypatch):
    monkeypatch.setenv("ATHENA_RESULT_BACKEND", "amqp://rabbit:5672//")
    with pytest.raises(ConfigurationError, match="ATHENA_RESULT_BACKEND"):
        load_settings()


def test_flower_basic_auth_user_password_is_accepted_and_kept_secret(monkeypatch):
    monkeypatch.setenv("ATHENA_FLOWER_BASIC_AUTH", "admin:s3cret")
    auth = load_settings().flower_basic_auth
    assert auth.get_secret_value() == "admin:s3cret"
    assert "s3cret" not in repr(auth)


@pytest.mark.parametrize("value", ["admin", "admin:", ":s3cret"])
def test_flower_basic_auth_without_user_and_password_is_refused(monkeypatch, value):
    monkeypatch.setenv("ATHENA_FLOWER_BASIC_AUTH", value)
    with pytest.raises(ConfigurationError, match="ATHENA_FLOWER_BASIC_AUTH"):
        load_settings()


def test_configuration_error_is_raised_instead_of_pydantic_validation_error(monkeypatch):
    monkeypatch.setenv("ATHENA_RETRY_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert not isinstance(caught.value, ValidationError)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize("placeholder", ["change-me", "CHANGE-ME", "changeme", "password", "secret"])
@pytest.mark.parametrize("variable", ["ATHENA_BROKER_URL", "ATHENA_RESULT_BACKEND", "ATHENA_METRICS_URL"])
def test_a_placeholder_redis_password_is_refused_naming_the_variable(clean_settings_env, monkeypatch, variable, placeholder):
    monkeypatch.setenv(variable, f"redis://:{placeholder}@redis:6379/0")
    with pytest.raises(ConfigurationError, match=f"{variable}: .*placeholder"):
        load_settings()


def test_a_placeholder_flower_password_is_refused(clean_settings_env, monkeypatch):
    monkeypatch.setenv("ATHENA_FLOWER_BASIC_AUTH", "athena:change-me")
    with pytest.raises(ConfigurationError, match="ATHENA_FLOWER_BASIC_AUTH: .*placeholder"):
        load_settings()


def test_a_real_password_is_taken(clean_settings_env, monkeypatch):
    monkeypatch.setenv("ATHENA_BROKER_URL", "redis://:s3cret-4f9a@redis:6379/0")
    assert load_settings().broker_url == "redis://:s3cret-4f9a@redis:6379/0"


@pytest.mark.parametrize("value", ["change-me", "Password", ""])
def test_a_placeholder_or_empty_embedded_redis_password_is_refused(clean_settings_env, monkeypatch, value):
    monkeypatch.setenv("ATHENA_REDIS_PASSWORD", value)
    with pytest.raises(ConfigurationError, match="ATHENA_REDIS_PASSWORD: "):
        load_settings()
