"""`athena-inference models`: fetch the production GGUF models, resumably and verified.

For each file: ask the hub for its size and SHA-256 (a HEAD on the file's
`/resolve/` address answers both, in `X-Linked-Size` and `X-Linked-Etag`, for
files kept in LFS), or take them pinned in the manifest; check the disk has
room; download into `<file>.part`, resuming with a `Range` request after a
dropped connection, with backoff between attempts; then check size and hash
before renaming the file into place. A file already in place is verified, not
fetched again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import httpx
from pydantic import BaseModel, Field
from tqdm import tqdm

from athena_client.errors import ConfigurationError

CHUNK = 1 << 20
# Room to leave on the disk beyond the files themselves.
DISK_MARGIN_BYTES = 512 << 20


class ModelFile(BaseModel):
    path: str
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: Optional[int] = Field(None, ge=0)


class ModelSpec(BaseModel):
    """A model on the hub: repository, revision and its files (several for a split GGUF)."""

    name: str
    repo: str
    revision: str = "main"
    files: list[ModelFile]
    serves: str


# What the production compose file (compose/docker-compose.yml) loads. A split
# GGUF is loaded by naming its first part.
PRODUCTION_MODELS = [
    ModelSpec(
        name="nomic-embed-text-v1.5",
        repo="nomic-ai/nomic-embed-text-v1.5-GGUF",
        files=[ModelFile(path="nomic-embed-text-v1.5.Q4_K_M.gguf")],
        serves="embeddings (768-d)",
    ),
    ModelSpec(
        name="qwen2.5-7b-instruct",
        repo="Qwen/Qwen2.5-7B-Instruct-GGUF",
        files=[
            ModelFile(path="qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf"),
            ModelFile(path="qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf"),
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
        transport: Optional[httpx.BaseTransport] = None,
        sleep: Callable[[float], None] = time.sleep,
        free_bytes: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.dest = dest
        self.attempts, self.backoff_s, self.backoff_max_s = attempts, backoff_s, backoff_max_s
        self._sleep, self._free_bytes = sleep, free_bytes
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(60.0, connect=10.0), transport=transport)

    def url(self, spec: ModelSpec, file: ModelFile) -> str:
        return f"{self.hub_url}/{spec.repo}/resolve/{spec.revision}/{file.path}"

    # --- the plan: sizes, hashes, disk ---

    def describe(self, spec: ModelSpec, file: ModelFile) -> ModelFile:
        """The file with its size and SHA-256, pinned or as the hub declares them."""
        if file.size is not None and file.sha256 is not None:
            return file
        url = self.url(spec, file)
        try:
            head = self.client.head(url, follow_redirects=False)
            if head.status_code in (301, 302, 303, 307, 308) and "x-linked-size" not in head.headers:
                head = self.client.head(url, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise DownloadError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}") from None
        _raise_for_status(head, url)
        etag = head.headers.get("x-linked-etag", "").strip('"').removeprefix("W/").strip('"')
        size = head.headers.get("x-linked-size") or head.headers.get("content-length")
        sha = file.sha256 or (etag if len(etag) == 64 else None)
        if sha is None:
            raise DownloadError(f"{url} declares no SHA-256 (X-Linked-Etag); pin `sha256` for {file.path} in the manifest")
        return ModelFile(path=file.path, sha256=sha, size=file.size if file.size is not None else int(size or 0) or None)

    def check_disk(self, files: list[ModelFile]) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)
        needed = 0
        for file in files:
            if (self.dest / file.path).exists():
                continue
            part = self.dest / (file.path + ".part")
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
        part = self.dest / (file.path + ".part")
        url = self.url(spec, file)
        for attempt in range(1, self.attempts + 1):
            try:
                self._stream(url, part, file)
                break
            except (httpx.TransportError, _Incomplete) as exc:
                if attempt == self.attempts:
                    raise DownloadError(
                        f"{file.path}: download failed {attempt} times ({exc}); run the command again to resume "
                        f"from {part.stat().st_size if part.exists() else 0} bytes"
                    ) from None
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                tqdm.write(f"{file.path}: {exc}; resuming in {delay:.0f} s (attempt {attempt + 1}/{self.attempts})")
                self._sleep(delay)
        self._verify(part, file, delete_on_mismatch=True)
        os.replace(part, target)
        return target

    def _stream(self, url: str, part: Path, file: ModelFile) -> None:
        have = part.stat().st_size if part.exists() else 0
        if file.size is not None and have > file.size:
            part.unlink()
            have = 0
        if file.size is not None and have == file.size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.client.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code == 416:
                return
            _raise_for_status(response, url)
            if have and response.status_code != 206:
                have = 0  # the server ignored the range: start over
            mode = "ab" if have else "wb"
            with part.open(mode) as out, tqdm(
                total=file.size, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=file.path, leave=True
            ) as bar:
                # As received: a buffered chunk would be lost with the connection.
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    bar.update(len(chunk))
        got = part.stat().st_size
        if file.size is not None and got < file.size:
            raise _Incomplete(f"connection ended at {got} of {file.size} bytes")

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
            problem = f"{path} has SHA-256 {digest.hexdigest()}, expected {file.sha256}"
        if delete_on_mismatch:
            path.unlink()
            raise DownloadError(f"{problem}; the partial file was removed, run the command again to fetch it afresh")
        raise DownloadError(f"{problem}; delete it and run the command again")

    def close(self) -> None:
        self.client.close()


class _Incomplete(Exception):
    pass


def _raise_for_status(response: httpx.Response, url: str) -> None:
    code = response.status_code
    if code < 400:
        return
    if code in (401, 403):
        raise DownloadError(f"{url}: HTTP {code}; the model may be gated: set ATHENA_MODEL_HUB_TOKEN to a token with access")
    if code == 404:
        raise DownloadError(f"{url}: HTTP 404; check the repository, revision and file name in the manifest")
    raise DownloadError(f"{url}: HTTP {code}")


def download_models(downloader: Downloader, specs: list[ModelSpec]) -> dict[str, list[Path]]:
    """Every file of `specs`, sized and hashed first, so a missing one fails before gigabytes are fetched."""
    planned = [(spec, [downloader.describe(spec, f) for f in spec.files]) for spec in specs]
    downloader.check_disk([f for _, files in planned for f in files])
    return {spec.name: [downloader.fetch(spec, f) for f in files] for spec, files in planned}
