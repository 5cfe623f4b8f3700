"""`athena-inference models`: fetch the production GGUF models, resumably and verified.

The transfer is huggingface_hub's `hf_hub_download`: it asks the hub (or the
endpoint in ATHENA_MODEL_HUB_URL) for the file's etag and size, resumes a
partial download with a `Range` request, checks the size, and shows progress.
Around it, this module adds what the command promises beyond that:

- every file is sized first, so a disk too small fails before gigabytes arrive;
- a dropped connection is tried again, with backoff, up to a number of attempts,
  and the partial file is kept for the next run to resume from;
- each file's SHA-256 is checked (the hub's LFS etag, or the one pinned in the
  manifest) before it is moved into the models folder; a bad file is deleted.

Partial downloads live in huggingface_hub's own cache folder beside the models
folder, so the models folder only ever holds verified files.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import requests
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from pydantic import BaseModel, Field
from tqdm import tqdm

from athena_client.contract.errors import ConfigurationError
from athena_inference.config.retry import RetryPolicy

CHUNK = 1 << 20
# Room to leave on the disk beyond the files themselves.
DISK_MARGIN_BYTES = 512 << 20


class ModelFile(BaseModel):
    path: str
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: Optional[int] = Field(None, ge=0)


class ModelSpec(BaseModel):
    """A model on the hub: repository, revision and its files (several for a split GGUF).

    `revision` is a branch, tag or commit; the production models name a commit,
    so that a new upload to the repository never changes what is served.
    """

    name: str
    repo: str
    revision: str = "main"
    files: list[ModelFile]
    serves: str


# What the production compose file (compose/docker-compose.yml) loads. A split
# GGUF is loaded by naming its first part. Each is pinned to a commit of its
# repository, and each file to its size and SHA-256 at that commit: a file
# that differs is refused, whatever the hub declares. To move to a newer
# upload, change the commit and the files' hashes together.
PRODUCTION_MODELS = [
    ModelSpec(
        name="nomic-embed-text-v1.5",
        repo="nomic-ai/nomic-embed-text-v1.5-GGUF",
        revision="f750a25aba2d24830d874eb4e1af468f37248a37",
        files=[
            ModelFile(
                path="nomic-embed-text-v1.5.Q4_K_M.gguf",
                sha256="d4e388894e09cf3816e8b0896d81d265b55e7a9fff9ab03fe8bf4ef5e11295ac",
                size=84_106_624,
            )
        ],
        serves="embeddings (768-d)",
    ),
    ModelSpec(
        name="qwen2.5-7b-instruct",
        repo="Qwen/Qwen2.5-7B-Instruct-GGUF",
        revision="bb5d59e06d9551d752d08b292a50eb208b07ab1f",
        files=[
            ModelFile(
                path="qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
                sha256="dfce12e3862a5283ccfb88221b48480e58745165de856439950d0f22590580db",
                size=3_993_201_344,
            ),
            ModelFile(
                path="qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf",
                sha256="539cf93f78e887edea1c04e2d7d8cdaca9d01dae9c9025bcb8accbe29df3d72a",
                size=689_872_288,
            ),
        ],
        serves="reasoning",
    ),
]


class DownloadError(ConfigurationError):
    """A model file could not be fetched or verified; the message says what to do."""


class Downloader:
    def __init__(
        self,
        hub_url: str,
        dest: Path,
        *,
        token: Optional[str] = None,
        attempts: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        cache_dir: Optional[Path] = None,
        sleep: Callable[[float], None] = time.sleep,
        free_bytes: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.dest = dest
        self.token = token
        self.retry = RetryPolicy(attempts=attempts, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
        # Partial files, in huggingface_hub's cache layout, beside the models folder.
        self.cache_dir = cache_dir or dest.with_name(f".{dest.name}-incoming")
        self._sleep, self._free_bytes = sleep, free_bytes
        self._etags: dict[tuple[str, str], str] = {}

    def url(self, spec: ModelSpec, file: ModelFile) -> str:
        return hf_hub_url(spec.repo, file.path, revision=spec.revision, endpoint=self.hub_url)

    # --- the plan: sizes, hashes, disk ---

    def describe(self, spec: ModelSpec, file: ModelFile) -> ModelFile:
        """The file with its size and SHA-256, pinned or as the hub declares them."""
        url = self.url(spec, file)
        try:
            meta = get_hf_file_metadata(url, token=self.token)
        except HfHubHTTPError as exc:
            raise _status_error(exc, url) from None
        except requests.RequestException as exc:
            raise DownloadError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
        etag = (meta.etag or "").strip('"')
        self._etags[(spec.repo, file.path)] = etag
        sha = file.sha256 or (etag if len(etag) == 64 else None)
        if sha is None:
            raise DownloadError(f"{url} declares no SHA-256 (X-Linked-Etag); pin `sha256` for {file.path} in the manifest")
        return ModelFile(path=file.path, sha256=sha, size=file.size if file.size is not None else meta.size)

    def _partial(self, spec: ModelSpec, file: ModelFile) -> Path:
        etag = self._etags.get((spec.repo, file.path), file.sha256 or "")
        return self.cache_dir / repo_folder_name(repo_id=spec.repo, repo_type="model") / "blobs" / f"{etag}.incomplete"

    def check_disk(self, planned: list[tuple["ModelSpec", list[ModelFile]]]) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)
        needed = 0
        for spec, files in planned:
            for file in files:
                if (self.dest / file.path).exists():
                    continue
                part = self._partial(spec, file)
                needed += (file.size or 0) - (part.stat().st_size if part.exists() else 0)
        free = self._free_bytes(self.dest)
        if needed + DISK_MARGIN_BYTES > free:
            raise DownloadError(
                f"{self.dest} has {free / 1e9:.1f} GB free; the models need {needed / 1e9:.1f} GB more "
                f"(plus {DISK_MARGIN_BYTES >> 20} MB spare). Free some space or pass --dest on a larger disk"
            )

    # --- one file ---

    def fetch(self, spec: ModelSpec, file: ModelFile) -> Path:
        target = self.dest / file.path
        if target.exists():
            self._verify(target, file, delete_on_mismatch=False)
            return target
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                link = Path(
                    hf_hub_download(
                        spec.repo, file.path, revision=spec.revision, cache_dir=self.cache_dir, endpoint=self.hub_url, token=self.token
                    )
                )
                break
            except HfHubHTTPError as exc:
                raise _status_error(exc, self.url(spec, file)) from None
            except (requests.RequestException, LocalEntryNotFoundError, OSError) as exc:
                part = self._partial(spec, file)
                have = part.stat().st_size if part.exists() else 0
                if attempt == attempts:
                    raise DownloadError(
                        f"{file.path}: download failed {attempt} times ({exc.__class__.__name__}: {exc}); "
                        f"run the command again to resume from {have} bytes"
                    ) from None
                delay = self.retry.delay(attempt)
                tqdm.write(f"{file.path}: {exc.__class__.__name__}; resuming from {have} bytes in {delay:.0f} s (attempt {attempt + 1}/{attempts})")
                self._sleep(delay)
        blob = link.resolve()
        try:
            self._verify(blob, file, delete_on_mismatch=True)
        finally:
            link.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(blob, target)
        return target

    def _verify(self, path: Path, file: ModelFile, *, delete_on_mismatch: bool) -> None:
        size = path.stat().st_size
        if file.size is not None and size != file.size:
            problem = f"{path} is {size} bytes, expected {file.size}"
        else:
            digest = hashlib.sha256()
            with path.open("rb") as source, tqdm(total=size, unit="B", unit_scale=True, desc=f"verify {file.path}", leave=False) as bar:
                while block := source.read(CHUNK):
                    digest.update(block)
                    bar.update(len(block))
            if digest.hexdigest() == file.sha256:
                return
            problem = f"{path.name} has SHA-256 {digest.hexdigest()}, expected {file.sha256}"
        if delete_on_mismatch:
            path.unlink()
            raise DownloadError(f"{problem}; the partial file was removed, run the command again to fetch it afresh")
        raise DownloadError(f"{problem}; delete it and run the command again")


def _status_error(exc: HfHubHTTPError, url: str) -> DownloadError:
    code = exc.response.status_code if exc.response is not None else None
    if code in (401, 403):
        return DownloadError(f"{url}: HTTP {code}; the model may be gated: set ATHENA_MODEL_HUB_TOKEN to a token with access")
    if code == 404:
        return DownloadError(f"{url}: HTTP 404; check the repository, revision and file name in the manifest")
    return DownloadError(f"{url}: HTTP {code}: {str(exc).splitlines()[0]}")


def download_models(downloader: Downloader, specs: list[ModelSpec]) -> dict[str, list[Path]]:
    """Every file of `specs`, sized and hashed first, so a missing one fails before gigabytes are fetched."""
    planned = [(spec, [downloader.describe(spec, f) for f in spec.files]) for spec in specs]
    downloader.check_disk(planned)
    return {spec.name: [downloader.fetch(spec, f) for f in files] for spec, files in planned}
