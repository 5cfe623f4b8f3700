"""Settings / load_settings: defaults, Athena's env names, and refusals that name the variable."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from athena_client.contract.errors import ConfigurationError
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
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILE", "nomic-embed-text-v1.5")
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


# --- embedding profiles per lane ---


def test_the_dimension_defaults_to_the_profiles_own(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILE", "nomic-embed-text-v1.5")
    settings = load_settings()
    assert settings.embedding_dim == 768
    assert settings.embedding_profile_for(False).query_prefix == "search_query: "


def test_a_matryoshka_size_the_profile_allows_is_taken(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILE", "NOMIC-embed-text-v1.5")
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "256")
    assert load_settings().lane_dimension(False) == 256


def test_a_size_the_model_cannot_have_names_the_variable_and_the_profile_to_set(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "768")
    with pytest.raises(ConfigurationError, match="LLAMACPP_EMBEDDING_DIM=768: all-MiniLM-L6-v2 makes 384.*ATHENA_EMBEDDING_PROFILE"):
        load_settings()


def test_a_size_between_the_matryoshka_sizes_is_refused(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILE", "nomic-embed-text-v1.5")
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "300")
    with pytest.raises(ConfigurationError, match="768, 512, 256, 128, 64 dimensions long, not 300"):
        load_settings()


def test_an_unknown_profile_lists_the_known_ones(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_PROFILE", "no-such-model")
    with pytest.raises(ConfigurationError, match="ATHENA_EMBEDDINGS_BULK_PROFILE='no-such-model' names no embedding profile; known: .*nomic-embed-text-v1.5"):
        load_settings()


def test_profiles_are_added_from_json_named_by_their_key(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILES", '{"house-model": {"dimension": 512, "query_prefix": "q: ", "pooling": "cls"}}')
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_PROFILE", "house-model")
    settings = load_settings()
    profile = settings.embedding_profile_for(True)
    assert (profile.name, profile.pooling, profile.prefix("query"), profile.prefix("document")) == ("house-model", "cls", "q: ", "")
    assert settings.lane_dimension(True) == 512
    # The interactive lane keeps its own model.
    assert settings.embedding_profile_for(False).name == "all-MiniLM-L6-v2" and settings.embedding_dim == 384


def test_a_bad_profile_field_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILES", '{"m": {"dimension": 64, "dimensions": [128]}}')
    with pytest.raises(ConfigurationError, match="ATHENA_EMBEDDING_PROFILES"):
        load_settings()


def test_the_bulk_lane_inherits_the_interactive_size_unless_it_has_a_model_of_its_own(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILE", "nomic-embed-text-v1.5")
    monkeypatch.setenv("LLAMACPP_EMBEDDING_DIM", "256")
    assert load_settings().lane_dimension(True) == 256
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_PROFILE", "e5-base-v2")
    assert load_settings().lane_dimension(True) == 768


def test_max_tokens_past_the_profiles_context_is_refused(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_MAX_TOKENS", "2048")
    with pytest.raises(ConfigurationError, match="ATHENA_EMBEDDING_MAX_TOKENS=2048 is more than all-MiniLM-L6-v2 reads"):
        load_settings()


def test_a_known_profile_may_change_its_context_but_not_its_vectors_under_its_own_name(monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILE", "nomic-embed-text-v1.5")
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILES", '{"nomic-embed-text-v1.5": {"dimension": 768, "dimensions": [256], '
                       '"document_prefix": "search_document: ", "query_prefix": "search_query: ", "truncate_norm": "layer_norm", "context": 2048}}')
    assert load_settings().embedding_profile_for(False).context == 2048
    monkeypatch.setenv("ATHENA_EMBEDDING_PROFILES", '{"Nomic-Embed-Text-v1.5": {"dimension": 768}}')
    with pytest.raises(ConfigurationError, match="ATHENA_EMBEDDING_PROFILES: nomic-embed-text-v1.5 is a known profile, and this one changes its document_prefix, query_prefix, truncate_norm: .*a name of its own"):
        load_settings()
