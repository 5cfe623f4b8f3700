"""The models command against a real local HTTP server that honours Range and
drops connections midway, the way a flaky link to the hub does."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest
from huggingface_hub import file_download

from athena_inference.workers.ops.model_download import DownloadError, Downloader, ModelFile, ModelSpec, download_models

# huggingface_hub writes what it receives in pieces of this size, so a dropped
# connection resumes from the last whole piece.
PIECE = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
BLOB = os.urandom(5 * PIECE + 12345)
SHA = hashlib.sha256(BLOB).hexdigest()


COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """Answers like the model hub does for an LFS file: a HEAD on /<repo>/resolve/<revision>/<file>
    redirects to a CDN address and declares the commit, size and SHA-256; the CDN serves the bytes.
    It knows one repository, `org/model`, at the branch `main` and at the commit COMMIT."""

    def __init__(self) -> None:
        self.drops_left = 0  # GETs that are cut after `drop_after` bytes
        self.drop_after = PIECE
        self.ranges: list[str | None] = []
        self.declared_sha = SHA
        self.declared_size = len(BLOB)
        self.honour_range = True
        self.revisions: list[str] = []  # the revision of every HEAD
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _known(self) -> bool:
                if not self.path.startswith(("/org/model/resolve/main/", f"/org/model/resolve/{COMMIT}/", "/cdn/")):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                return True

            def do_HEAD(self):
                if not self._known():
                    return
                hub.revisions.append(self.path.split("/")[4])
                self.send_response(302)
                self.send_header("Location", f"{hub.url}/cdn/{self.path.rsplit('/', 1)[-1]}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Size", str(hub.declared_size))
                self.send_header("X-Linked-Etag", f'"{hub.declared_sha}"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                if not self._known():
                    return
                wanted = self.headers.get("Range")
                hub.ranges.append(wanted)
                start = int(wanted.split("=")[1].rstrip("-")) if wanted and hub.honour_range else 0
                body = BLOB[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hub.drops_left:
                    hub.drops_left -= 1
                    self.wfile.write(body[: hub.drop_after])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll, so `close` (which waits for the loop's next look) is quick.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub():
    server = Hub()
    yield server
    server.close()


SPEC = ModelSpec(name="tiny", repo="org/model", files=[ModelFile(path="tiny.gguf")], serves="tests")


def downloader(hub, tmp_path, **kwargs) -> Downloader:
    return Downloader(hub.url, tmp_path / "models", attempts=4, sleep=lambda s: None, **kwargs)


def test_a_dropped_connection_resumes_from_where_it_stopped(hub, tmp_path):
    hub.drops_left = 2
    done = download_models(downloader(hub, tmp_path), [SPEC])
    path = done["tiny"][0]
    assert path.read_bytes() == BLOB
    assert hub.ranges == [None, f"bytes={PIECE}-", f"bytes={2 * PIECE}-"]
    assert not (tmp_path / "models" / "tiny.gguf.part").exists()


def test_a_file_already_in_place_is_verified_not_fetched(hub, tmp_path):
    download_models(downloader(hub, tmp_path), [SPEC])
    hub.ranges.clear()
    download_models(downloader(hub, tmp_path), [SPEC])
    assert hub.ranges == []


def test_a_wrong_checksum_is_refused_and_the_partial_file_removed(hub, tmp_path):
    hub.declared_sha = "0" * 64
    with pytest.raises(DownloadError, match="expected 0000.*removed"):
        download_models(downloader(hub, tmp_path), [SPEC])
    assert list((tmp_path / "models").iterdir()) == []


def test_a_server_that_ignores_range_restarts_the_file_cleanly(hub, tmp_path):
    hub.drops_left, hub.honour_range = 1, False
    path = download_models(downloader(hub, tmp_path), [SPEC])["tiny"][0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA


def test_too_little_disk_fails_before_downloading(hub, tmp_path):
    hub.declared_size = 3 << 20  # a small file: the spare room alone does not fit
    small_disk = downloader(hub, tmp_path, free_bytes=lambda path: 100 << 20)
    with pytest.raises(DownloadError, match=r"GB free; the models need 0.0 GB more"):
        download_models(small_disk, [SPEC])
    assert hub.ranges == []


def test_giving_up_after_the_retries_says_how_to_resume(hub, tmp_path):
    hub.drops_left = 10
    with pytest.raises(DownloadError, match=f"failed 4 times.*run the command again to resume from {4 * PIECE} bytes"):
        download_models(downloader(hub, tmp_path), [SPEC])


def test_a_missing_file_names_what_to_check(hub, tmp_path):
    missing = ModelSpec(name="x", repo="org/other", files=[ModelFile(path="x.gguf")], serves="tests")
    with pytest.raises(DownloadError, match="HTTP 404; check the repository"):
        download_models(downloader(hub, tmp_path), [missing])


def test_an_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    # huggingface_hub tries a refused connection again by itself, for 1 + 2 + 4 + 8 + 8 s; ours is attempts=1.
    monkeypatch.setattr(file_download, "http_backoff", functools.partial(file_download.http_backoff, max_retries=0))
    gone = Downloader("http://127.0.0.1:9", tmp_path, attempts=1)
    with pytest.raises(DownloadError, match="cannot reach http://127.0.0.1:9/org/model"):
        download_models(gone, [SPEC])


def test_a_pinned_revision_is_the_one_asked_for(hub, tmp_path):
    pinned = SPEC.model_copy(update={"revision": COMMIT})
    path = download_models(downloader(hub, tmp_path), [pinned])["tiny"][0]
    assert path.read_bytes() == BLOB
    assert set(hub.revisions) == {COMMIT}


def test_a_pinned_checksum_is_checked_whatever_the_hub_declares(hub, tmp_path):
    hub.declared_sha = "0" * 64
    pinned = SPEC.model_copy(update={"files": [ModelFile(path="tiny.gguf", sha256=SHA, size=len(BLOB))]})
    path = download_models(downloader(hub, tmp_path), [pinned])["tiny"][0]
    assert path.read_bytes() == BLOB


def test_a_file_that_differs_from_its_pinned_checksum_is_refused_though_the_hub_agrees_with_it(hub, tmp_path):
    pinned = SPEC.model_copy(update={"files": [ModelFile(path="tiny.gguf", sha256="f" * 64)]})
    with pytest.raises(DownloadError, match=f"has SHA-256 {SHA}, expected f{{64}}.*removed"):
        download_models(downloader(hub, tmp_path), [pinned])
    assert list((tmp_path / "models").iterdir()) == []
