"""The compressor seam: LLMLingua-2 with a tiny model built here, degradation, force tokens, rate correction."""

from __future__ import annotations

import pytest

from athena_client.errors import CompressionUnavailable
from athena_inference.config.settings import load_settings
from athena_inference.workers.compressor import Compressor, _next_aim, protect

TEXT = (
    "the team moved the nightly job to a new server because the old one ran out of disk and "
    "the backups failed twice in one week so the lead asked for alerts on free space and a weekly "
    "report of job durations which the team now reviews every friday after the planning meeting"
)


@pytest.fixture(scope="module")
def tiny_llmlingua2(tmp_path_factory):
    """A BERT token classifier with random weights: the LLMLingua-2 code path, no download."""
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    # LLMLingua-2 picks its word-boundary rule from the model's path.
    folder = tmp_path_factory.mktemp("tiny-bert-base-multilingual-cased")
    words = sorted(set(TEXT.split()))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=2,
    )
    BertForTokenClassification(config).save_pretrained(folder)
    return folder


def test_llmlingua2_path_compresses_with_a_tiny_token_classifier(tiny_llmlingua2, tmp_path):
    settings = load_settings(cache_dir=tmp_path, compression_method="llmlingua2", compression_llmlingua2_model=tiny_llmlingua2)
    compressor = Compressor.load(settings)
    assert compressor.status.ready and compressor.status.method == "llmlingua2"
    out = compressor.compress(TEXT, rate=0.5, force_tokens=["backups"])
    assert out.compressed_tokens < out.original_tokens
    assert abs(out.compressed_tokens / out.original_tokens - 0.5) <= 0.15 * 0.5
    assert "backups" in out.prompt


def test_auto_picks_llmlingua2_when_its_model_is_on_disk(tiny_llmlingua2, tmp_path):
    settings = load_settings(cache_dir=tmp_path, compression_llmlingua2_model=tiny_llmlingua2)
    assert Compressor.load(settings).status.method == "llmlingua2"


def test_llmlingua2_model_of_an_unknown_family_is_not_ready(tmp_path):
    folder = tmp_path / "my-classifier"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    settings = load_settings(cache_dir=tmp_path, compression_method="llmlingua2", compression_llmlingua2_model=folder)
    status = Compressor.load(settings).status
    assert not status.ready and "bert-base-multilingual-cased" in status.reason


def test_switched_off_compressor_is_not_ready_and_says_why(tmp_path):
    compressor = Compressor.load(load_settings(cache_dir=tmp_path, compression_enabled=False))
    assert not compressor.status.ready
    assert "ATHENA_COMPRESSION_ENABLED" in compressor.status.reason
    with pytest.raises(CompressionUnavailable, match="switched off"):
        compressor.compress(TEXT, rate=0.5)


def test_missing_model_is_not_ready_and_names_the_folder(tmp_path):
    missing = tmp_path / "nothing-here"
    compressor = Compressor.load(load_settings(cache_dir=tmp_path, compression_method="perplexity", compression_lm_path=missing))
    assert not compressor.status.ready
    assert str(missing) in compressor.status.reason and "provision" in compressor.status.reason


def test_tokens_are_counted_with_cl100k_even_when_not_ready(tmp_path):
    compressor = Compressor.load(load_settings(cache_dir=tmp_path, compression_enabled=False))
    assert compressor.count_tokens("hello world") == 2


def test_protect_keeps_each_force_token_in_an_uncompressed_segment():
    marked = protect("use Redis, not <Redis-like> stores", ["Redis"])
    assert marked.count("<llmlingua, compress=False>Redis</llmlingua>") == 2
    assert "<Redis-like>" not in marked  # "<" is carried as a private-use character
    assert marked.startswith("<llmlingua>use </llmlingua>")


def test_next_aim_scales_after_one_pass():
    assert _next_aim([(0.5, 200)], wanted=100) == pytest.approx(0.25)


def test_next_aim_interpolates_through_the_last_two_passes():
    # 0.5 -> 216 tokens, 0.4 -> 200 tokens: 16 tokens per 0.1, so 182 tokens at 0.2875.
    assert _next_aim([(0.5, 216), (0.4, 200)], wanted=182) == pytest.approx(0.2875)


def test_next_aim_stays_within_bounds():
    assert _next_aim([(0.02, 400)], wanted=1) == 0.01
    assert _next_aim([(0.9, 10)], wanted=100) == 1.0


def test_fetching_llmlingua2_without_a_network_fails_with_a_clear_message(tmp_path):
    import os
    import subprocess

    from tests.harness import CLI

    env = dict(os.environ, ATHENA_CACHE_DIR=str(tmp_path), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    done = subprocess.run([*CLI, "provision", "--llmlingua2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "could not fetch microsoft/llmlingua-2" in done.stderr and "perplexity" in done.stderr


def test_llmlingua2_chunks_inputs_longer_than_its_window(tiny_llmlingua2, tmp_path):
    settings = load_settings(cache_dir=tmp_path, compression_method="llmlingua2", compression_llmlingua2_model=tiny_llmlingua2)
    compressor = Compressor.load(settings)
    long_text = " ".join([TEXT] * 40)  # about 2,000 tokens, four times the model's 512
    out = compressor.compress(long_text, rate=0.5)
    assert out.original_tokens > 1500
    assert abs(out.compressed_tokens / out.original_tokens - 0.5) <= 0.15 * 0.5


def test_unusable_compressor_fails_every_call_with_its_reason():
    compressor = Compressor.unusable("loading the compressor failed: OSError: disk gone")
    assert not compressor.status.ready
    with pytest.raises(CompressionUnavailable, match="disk gone"):
        compressor.count_tokens("text")


def test_next_aim_survives_two_passes_at_the_same_aim():
    assert _next_aim([(0.01, 300), (0.01, 290)], wanted=100) == 0.01


def test_target_at_or_above_the_original_returns_it_whole(tmp_path, tiny_llmlingua2):
    settings = load_settings(cache_dir=tmp_path, compression_method="llmlingua2", compression_llmlingua2_model=tiny_llmlingua2)
    compressor = Compressor.load(settings)
    out = compressor.compress(TEXT, target_tokens=10_000)
    assert out.prompt == TEXT and out.compressed_tokens == out.original_tokens
