"""What `provision` puts on disk for the compressor: LLMLingua-2 fetched from a
local HTTP server that answers like the model hub (the configured repository, at
its pinned commit, into a folder named for it), and the perplexity model made
from SmolLM2's GGUF only."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from athena_client.contract.errors import ConfigurationError
from athena_inference.config.settings import load_settings
from athena_inference.workers.compressor import Compressor
from athena_inference.workers.ops import compressor_models
from tests.workers.compressor_fixtures import tiny_bert_classifier, tiny_xlm_roberta_classifier

pytestmark = pytest.mark.usefixtures("clean_settings_env")

TEXT = "the backups failed twice in one week so the lead asked for alerts on free space and a weekly report"
BERT_REPO = "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
XLMR_REPO = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"


class Hub:
    """Answers like the model hub: the repository's file list at a revision
    (/api/models/<repo>/revision/<rev>) and each file at /<repo>/resolve/<rev>/<path>.
    It holds the repositories it is given, each at one commit, and records every request."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, send_body: bool = True):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _answer(self, send_body: bool):
                path = unquote(self.path.split("?")[0])
                hub.requests.append(f"{self.command} {path}")
                if path.startswith("/api/models/") and "/revision/" in path:
                    repo, revision = path[len("/api/models/"):].split("/revision/")
                    files = hub.repos.get((repo, revision))
                    if files is None:
                        return self._reply(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"})
                    info = {"id": repo, "sha": revision, "siblings": [{"rfilename": name} for name in files]}
                    return self._reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, send_body)
                for (repo, revision), files in hub.repos.items():
                    prefix = f"/{repo}/resolve/{revision}/"
                    if path.startswith(prefix) and path[len(prefix):] in files:
                        body = files[path[len(prefix):]]
                        headers = {"X-Repo-Commit": revision, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
                        self.send_response(200)
                        for name, value in headers.items():
                            self.send_header(name, value)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        if send_body:
                            self.wfile.write(body)
                        return None
                return self._reply(404, b"", {"X-Error-Code": "EntryNotFound"}, send_body)

            def do_HEAD(self):
                self._answer(send_body=False)

            def do_GET(self):
                self._answer(send_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll, so `close` (which waits for the loop's next look) is quick.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def publish(self, repo: str, revision: str, folder: Path) -> None:
        self.repos[(repo, revision)] = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {"bert": tiny_bert_classifier(root / "bert", TEXT), "xlm-roberta": tiny_xlm_roberta_classifier(root / "xlmr", TEXT)}


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub allowed to make requests: a compressor loaded earlier in this
    process set HF_HUB_OFFLINE=1, which huggingface_hub may have read on import."""
    import huggingface_hub.constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    reset_sessions()


@pytest.fixture
def hub(models, online):
    server = Hub()
    server.publish(BERT_REPO, compressor_models.LLMLINGUA2_REVISIONS[BERT_REPO], models["bert"])
    server.publish(XLMR_REPO, compressor_models.LLMLINGUA2_REVISIONS[XLMR_REPO], models["xlm-roberta"])
    yield server
    server.close()


def settings_for(hub: Hub, tmp_path: Path, **overrides):
    return load_settings(cache_dir=tmp_path, model_hub_url=hub.url, **overrides)


def test_the_default_fetch_is_the_bert_model_at_its_pinned_commit(hub, tmp_path):
    folder = compressor_models.fetch_llmlingua2(settings_for(hub, tmp_path))
    assert folder == tmp_path / "models" / "llmlingua-2-bert-base-multilingual-cased-meetingbank"
    revision = compressor_models.LLMLINGUA2_REVISIONS[BERT_REPO]
    assert f"GET /api/models/{BERT_REPO}/revision/{revision}" in hub.requests
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"


def test_a_configured_xlm_roberta_model_is_fetched_into_a_folder_named_for_it_and_used_as_one(hub, tmp_path):
    settings = settings_for(hub, tmp_path, compression_llmlingua2_repo=XLMR_REPO)
    folder = compressor_models.fetch_llmlingua2(settings)
    assert folder == tmp_path / "models" / "llmlingua-2-xlm-roberta-large-meetingbank" == settings.llmlingua2_model_dir
    assert f"GET /api/models/{XLMR_REPO}/revision/{compressor_models.LLMLINGUA2_REVISIONS[XLMR_REPO]}" in hub.requests
    assert not any(BERT_REPO in request for request in hub.requests)
    compressor = Compressor.load(settings)  # auto: the folder is there, so LLMLingua-2
    assert compressor.status.method == "llmlingua2" and compressor.family == "xlm-roberta-large"


def test_a_model_already_in_place_is_not_fetched_again(hub, tmp_path):
    settings = settings_for(hub, tmp_path)
    compressor_models.fetch_llmlingua2(settings)
    hub.requests.clear()
    compressor_models.fetch_llmlingua2(settings)
    assert hub.requests == []


def test_another_repository_is_fetched_at_the_revision_set_for_it(hub, tmp_path, models):
    revision = "0123456789abcdef0123456789abcdef01234567"
    hub.publish("someone/llmlingua-2-finetuned", revision, models["bert"])
    settings = settings_for(
        hub, tmp_path, compression_llmlingua2_repo="someone/llmlingua-2-finetuned", compression_llmlingua2_revision=revision
    )
    assert compressor_models.fetch_llmlingua2(settings) == tmp_path / "models" / "llmlingua-2-finetuned"
    assert f"GET /api/models/someone/llmlingua-2-finetuned/revision/{revision}" in hub.requests


def test_another_repository_without_a_revision_is_refused_before_any_request(hub, tmp_path):
    settings = settings_for(hub, tmp_path, compression_llmlingua2_repo="someone/llmlingua-2-finetuned")
    with pytest.raises(ConfigurationError, match="ATHENA_COMPRESSION_LLMLINGUA2_REVISION"):
        compressor_models.fetch_llmlingua2(settings)
    assert hub.requests == []


def test_a_repository_that_is_not_a_token_classifier_is_refused_and_left_out_of_place(hub, tmp_path):
    revision = "fedcba9876543210fedcba9876543210fedcba98"
    causal = tmp_path / "published-causal"
    causal.mkdir()
    (causal / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    hub.publish("someone/a-causal-lm", revision, causal)
    settings = settings_for(hub, tmp_path / "cache", compression_llmlingua2_repo="someone/a-causal-lm", compression_llmlingua2_revision=revision)
    with pytest.raises(ConfigurationError, match="not a model LLMLingua-2 can use.*'llama'"):
        compressor_models.fetch_llmlingua2(settings)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_an_unreachable_hub_leaves_a_partial_download_out_of_place(tmp_path, online):
    # snapshot_download, unable to reach the hub, would hand back this partial folder as the model.
    settings = load_settings(cache_dir=tmp_path, model_hub_url="http://127.0.0.1:9")
    partial = settings.llmlingua2_model_dir.with_name(settings.llmlingua2_model_dir.name + ".partial")
    partial.mkdir(parents=True)
    (partial / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForTokenClassification"]}')
    with pytest.raises(ConfigurationError, match=f"could not fetch {BERT_REPO}.*perplexity"):
        compressor_models.fetch_llmlingua2(settings)
    assert not settings.llmlingua2_model_dir.exists()


def test_the_revision_setting_takes_only_a_commit_hash():
    with pytest.raises(ConfigurationError, match="ATHENA_COMPRESSION_LLMLINGUA2_REVISION"):
        load_settings(compression_llmlingua2_revision="main")


# --- the perplexity method's model ---


def test_an_existing_compressor_model_needs_no_gguf(tmp_path):
    settings = load_settings(cache_dir=tmp_path)
    (settings.compression_lm_dir).mkdir(parents=True)
    (settings.compression_lm_dir / "config.json").write_text("{}")

    def no_gguf() -> Path:
        raise AssertionError("the GGUF was asked for although the model is made")

    assert compressor_models.compressor_lm(settings, no_gguf) == settings.compression_lm_dir


def test_a_compressor_model_path_without_a_model_is_an_error_not_a_conversion(tmp_path, monkeypatch):
    converted: list[Path] = []
    monkeypatch.setattr(compressor_models, "_convert_gguf", lambda gguf, target: converted.append(gguf))
    settings = load_settings(cache_dir=tmp_path, compression_lm_path=tmp_path / "empty")
    with pytest.raises(ConfigurationError, match="ATHENA_COMPRESSION_LM_PATH"):
        compressor_models.compressor_lm(settings, lambda: tmp_path / "smollm2.gguf")
    assert converted == []
