"""The compressor seam: LLMLingua-2 and the perplexity method with tiny models built here, degradation,
force tokens, one-pass selection, rate correction.

The tiny models have random weights: these tests show the plumbing (what is sent,
how it is counted, which rule cuts words), never which words a real model keeps.
"""

from __future__ import annotations

import json

import pytest

from athena_client.contract.errors import CompressionUnavailable, ConfigurationError
from athena_inference.config.settings import load_settings
from athena_inference.workers import compressor as compressor_module
from athena_inference.workers.compressor import (
    Compressor,
    _next_aim,
    forced_positions,
    join_prompt,
    llmlingua2_family,
    protect,
    token_surprisal,
    window_pieces,
)
from tests.workers.compressor_fixtures import tiny_bert_classifier, tiny_xlm_roberta_classifier, tiny_xlm_roberta_tokenizer

TEXT = (
    "the team moved the nightly job to a new server because the old one ran out of disk and "
    "the backups failed twice in one week so the lead asked for alerts on free space and a weekly "
    "report of job durations which the team now reviews every friday after the planning meeting"
)
LONG_TEXT = " ".join([TEXT] * 3)  # about 170 cl100k tokens
INSTRUCTION = "Summarise the week for the lead, in plain words, for the Monday review."
QUESTION = "What failed, and what changed because of it?"
BERT, XLM_ROBERTA = "bert-base-multilingual-cased", "xlm-roberta-large"


@pytest.fixture(scope="module")
def tiny_llmlingua2(tmp_path_factory):
    """A BERT token classifier with random weights, in a folder whose name names no family."""
    return tiny_bert_classifier(tmp_path_factory.mktemp("models") / "tiny-classifier", TEXT)


def llmlingua2_compressor(folder, cache_dir) -> Compressor:
    settings = load_settings(cache_dir=cache_dir, compression_method="llmlingua2", compression_llmlingua2_model=folder)
    compressor = Compressor.load(settings)
    assert compressor.status.ready, compressor.status.reason
    return compressor


def test_llmlingua2_path_compresses_with_a_tiny_token_classifier(tiny_llmlingua2, tmp_path):
    compressor = llmlingua2_compressor(tiny_llmlingua2, tmp_path)
    assert compressor.status.method == "llmlingua2"
    out = compressor.compress(TEXT, rate=0.5, force_tokens=["backups"])
    assert out.compressed_tokens < out.original_tokens
    assert abs(out.compressed_tokens / out.original_tokens - 0.5) <= 0.15 * 0.5
    assert "backups" in out.prompt


def test_llmlingua2_keeps_instruction_and_question_whole_around_the_compressed_context(tiny_llmlingua2, tmp_path):
    out = llmlingua2_compressor(tiny_llmlingua2, tmp_path).compress(
        LONG_TEXT, instruction=INSTRUCTION, question=QUESTION, rate=0.5
    )
    assert out.prompt.startswith(INSTRUCTION + "\n\n") and out.prompt.endswith("\n\n" + QUESTION)
    context = out.prompt[len(INSTRUCTION) + 2 : -len(QUESTION) - 2]
    assert 0 < len(context.split()) < len(LONG_TEXT.split())
    assert set(context.split()) <= set(TEXT.split())  # only the context went through the classifier


def test_llmlingua2_counts_the_prompt_it_returns_with_cl100k(tiny_llmlingua2, tmp_path):
    import tiktoken

    out = llmlingua2_compressor(tiny_llmlingua2, tmp_path).compress(
        LONG_TEXT, instruction=INSTRUCTION, question=QUESTION, rate=0.5
    )
    cl100k = tiktoken.get_encoding("cl100k_base")
    assert out.compressed_tokens == len(cl100k.encode(out.prompt))
    assert out.original_tokens == len(cl100k.encode(join_prompt(INSTRUCTION, LONG_TEXT, QUESTION)))


def test_llmlingua2_lands_the_whole_prompt_on_the_rate_asked(tiny_llmlingua2, tmp_path):
    # The instruction is kept whole, so the context must shrink by more than the rate for the prompt to reach it.
    instruction = " ".join([INSTRUCTION] * 4)
    out = llmlingua2_compressor(tiny_llmlingua2, tmp_path).compress(LONG_TEXT, instruction=instruction, rate=0.5)
    assert out.prompt.startswith(instruction + "\n\n")
    assert abs(out.compressed_tokens / out.original_tokens - 0.5) <= 0.15 * 0.5


def test_llmlingua2_first_aim_is_the_share_of_the_context_the_rate_leaves(tiny_llmlingua2, tmp_path, monkeypatch):
    compressor = llmlingua2_compressor(tiny_llmlingua2, tmp_path)
    asked: list[float] = []
    classify = compressor._engine.compress_prompt_llmlingua2

    def recording(context, rate, **kwargs):
        asked.append(rate)
        return classify(context, rate=rate, **kwargs)

    monkeypatch.setattr(compressor._engine, "compress_prompt_llmlingua2", recording)
    out = compressor.compress(LONG_TEXT, instruction=INSTRUCTION, question=QUESTION, rate=0.5)
    context_tokens = compressor.count_tokens(LONG_TEXT)
    whole = out.original_tokens - context_tokens
    assert asked[0] == pytest.approx((round(out.original_tokens * 0.5) - whole) / context_tokens)
    assert asked[0] < 0.5  # the whole parts take their share of the budget first


@pytest.mark.parametrize(
    "build, folder_name, family",
    [
        (tiny_bert_classifier, "llmlingua-2-xlm-roberta-large-meetingbank", BERT),
        (tiny_xlm_roberta_classifier, "llmlingua-2-bert-base-multilingual-cased-meetingbank", XLM_ROBERTA),
    ],
)
def test_llmlingua2_word_rule_comes_from_the_model_not_the_folder_name(build, folder_name, family, tmp_path):
    # Each model sits in a folder named for the other family: llmlingua, left to read
    # the name, would keep pieces of XLM-R's words as words, and fail on BERT's tokens.
    compressor = llmlingua2_compressor(build(tmp_path / folder_name, TEXT), tmp_path / "cache")
    assert compressor.family == family and compressor._engine.model_name == family
    out = compressor.compress(LONG_TEXT, rate=0.5)
    assert out.compressed_tokens < out.original_tokens
    assert set(out.prompt.split()) <= set(TEXT.split())  # every word kept is a whole word of the text


def test_llmlingua2_family_is_part_of_the_cache_variant(tiny_llmlingua2, tmp_path):
    assert llmlingua2_compressor(tiny_llmlingua2, tmp_path).variant == f"llmlingua2/{BERT}"


@pytest.mark.parametrize(
    "config, complaint",
    [
        ({"model_type": "roberta", "architectures": ["RobertaForTokenClassification"]}, "of type 'roberta'"),
        ({"architectures": ["BertForTokenClassification"]}, "of type None"),
        ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "not a token classifier"),
        ({"model_type": "xlm-roberta", "architectures": ["XLMRobertaForTokenClassification"],
          "id2label": {"0": "a", "1": "b", "2": "c"}}, "3 labels"),
    ],
)
def test_llmlingua2_refuses_a_model_of_neither_family_or_kind(config, complaint, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match=complaint):
        llmlingua2_family(tmp_path)


def test_auto_picks_llmlingua2_when_its_model_is_on_disk(tiny_llmlingua2, tmp_path):
    settings = load_settings(cache_dir=tmp_path, compression_llmlingua2_model=tiny_llmlingua2)
    assert Compressor.load(settings).status.method == "llmlingua2"


def test_llmlingua2_model_of_neither_family_is_not_ready_and_says_why(tmp_path):
    # Named for a family, but the config says otherwise: the config wins.
    folder = tmp_path / "llmlingua-2-bert-base-multilingual-cased-meetingbank"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "roberta", "architectures": ["RobertaForTokenClassification"]}')
    settings = load_settings(cache_dir=tmp_path, compression_method="llmlingua2", compression_llmlingua2_model=folder)
    status = Compressor.load(settings).status
    assert not status.ready and "'roberta'" in status.reason and "'xlm-roberta'" in status.reason


def test_llmlingua2_model_whose_tokenizer_contradicts_its_config_is_not_ready(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    folder = tmp_path / "mixed"
    tokenizer = tiny_xlm_roberta_tokenizer(TEXT)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertForTokenClassification(config).save_pretrained(folder)
    settings = load_settings(cache_dir=tmp_path, compression_method="llmlingua2", compression_llmlingua2_model=folder)
    status = Compressor.load(settings).status
    assert not status.ready and "SentencePiece" in status.reason


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


def test_next_aim_scales_only_the_compressed_part():
    # 60 tokens are kept whole: 160 -> 110 means the other 100 must become 50.
    assert _next_aim([(0.5, 160)], wanted=110, whole=60) == pytest.approx(0.25)


def test_next_aim_stays_within_bounds():
    assert _next_aim([(0.02, 400)], wanted=1) == 0.01
    assert _next_aim([(0.9, 10)], wanted=100) == 1.0


def test_fetching_llmlingua2_without_a_network_fails_with_a_clear_message(tmp_path):
    import os
    import subprocess

    from tests.harness import CLI

    env = dict(os.environ, ATHENA_CACHE_DIR=str(tmp_path), ATHENA_MODEL_HUB_URL="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    done = subprocess.run([*CLI, "provision", "--llmlingua2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "could not fetch microsoft/llmlingua-2" in done.stderr and "perplexity" in done.stderr


def test_llmlingua2_chunks_inputs_longer_than_its_window(tiny_llmlingua2, tmp_path):
    compressor = llmlingua2_compressor(tiny_llmlingua2, tmp_path)
    long_text = " ".join([TEXT] * 40)  # about 2,000 cl100k tokens, many times the model's 512
    out = compressor.compress(long_text, rate=0.5)
    assert out.original_tokens > 1500
    assert abs(out.compressed_tokens / out.original_tokens - 0.5) <= 0.15 * 0.5
    # llmlingua's own cuts glue the words on either side together; these cuts do not.
    assert set(out.prompt.split()) <= set(TEXT.split())


def test_window_pieces_fit_the_window_and_end_at_a_sentence_when_one_fits(tiny_llmlingua2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llmlingua2)
    text = "the team moved. the old one ran out of disk and the backups failed"
    pieces = window_pieces(text, tokenizer, window=20)
    assert "".join(pieces) == text
    assert all(len(tokenizer.tokenize(piece)) <= 20 for piece in pieces)
    assert pieces[0] == "the team moved. "


def test_unusable_compressor_fails_every_call_with_its_reason():
    compressor = Compressor.unusable("loading the compressor failed: OSError: disk gone")
    assert not compressor.status.ready
    with pytest.raises(CompressionUnavailable, match="disk gone"):
        compressor.count_tokens("text")


def test_next_aim_survives_two_passes_at_the_same_aim():
    assert _next_aim([(0.01, 300), (0.01, 290)], wanted=100) == 0.01


def test_target_at_or_above_the_original_returns_it_whole(tmp_path, tiny_llmlingua2):
    compressor = llmlingua2_compressor(tiny_llmlingua2, tmp_path)
    out = compressor.compress(TEXT, target_tokens=10_000)
    assert out.prompt == TEXT and out.compressed_tokens == out.original_tokens


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A two-layer Llama with random weights and a byte-level BPE trained on TEXT: the perplexity path, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def perplexity_compressor(folder, cache_dir, selection="one_pass") -> Compressor:
    settings = load_settings(
        cache_dir=cache_dir, compression_method="perplexity", compression_lm_path=folder, compression_selection=selection
    )
    compressor = Compressor.load(settings)
    assert compressor.status.ready, compressor.status.reason
    return compressor



@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_one_pass_lands_on_the_rate_asked(tiny_causal_lm, tmp_path, rate):
    out = perplexity_compressor(tiny_causal_lm, tmp_path).compress(LONG_TEXT, rate=rate)
    wanted = round(out.original_tokens * rate)
    # The kept count is searched against the cl100k count itself, so it misses by a token or two, not by a share.
    assert abs(out.compressed_tokens - wanted) <= 2


def test_one_pass_hits_a_target_token_count(tiny_causal_lm, tmp_path):
    out = perplexity_compressor(tiny_causal_lm, tmp_path).compress(LONG_TEXT, target_tokens=60)
    assert abs(out.compressed_tokens - 60) <= 2


def test_one_pass_keeps_every_occurrence_of_each_force_token(tiny_causal_lm, tmp_path):
    forced = ["backups", "friday", "<disk>"]
    text = LONG_TEXT.replace("disk", "<disk>")
    out = perplexity_compressor(tiny_causal_lm, tmp_path).compress(text, rate=0.3, force_tokens=forced)
    assert out.compressed_tokens < 0.4 * out.original_tokens
    for token in forced:
        assert out.prompt.count(token) == text.count(token) > 0


def test_one_pass_keeps_instruction_and_question_whole(tiny_causal_lm, tmp_path):
    out = perplexity_compressor(tiny_causal_lm, tmp_path).compress(
        LONG_TEXT, instruction="Summarise the week.", question="What failed?", rate=0.5
    )
    assert out.prompt.startswith("Summarise the week.\n\n") and out.prompt.endswith("\n\nWhat failed?")
    assert abs(out.compressed_tokens - round(out.original_tokens * 0.5)) <= 2


def test_one_pass_runs_the_model_over_each_token_once(tiny_causal_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(compressor_module, "SCORE_WINDOW", 32)
    compressor = perplexity_compressor(tiny_causal_lm, tmp_path)
    read: list[int] = []
    real_forward = compressor._engine.model.forward

    def counting_forward(input_ids=None, **kwargs):
        read.append(input_ids.shape[1])
        return real_forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(compressor._engine.model, "forward", counting_forward)
    tokens = len(compressor._engine.tokenizer(LONG_TEXT, add_special_tokens=False).input_ids)
    compressor.compress(LONG_TEXT, rate=0.5)
    windows = -(-(tokens - 1) // 32)  # the first token is not scored: nothing predicts it
    # One read per token, plus the one token each later window reads again to score its first token.
    assert sum(read) == tokens + windows - 1 and len(read) == windows


def test_windowed_scores_equal_one_forward_pass_over_the_whole_text(tiny_causal_lm, tmp_path, monkeypatch):
    import torch

    compressor = perplexity_compressor(tiny_causal_lm, tmp_path)
    ids = torch.tensor(compressor._engine.tokenizer(LONG_TEXT, add_special_tokens=False).input_ids)
    whole = compressor._engine.get_ppl("", "token", ids.unsqueeze(0), torch.ones(1, len(ids), dtype=torch.long))
    monkeypatch.setattr(compressor_module, "SCORE_WINDOW", 16)
    scores = token_surprisal(compressor._engine, ids)
    assert scores[0] == float("inf")
    assert torch.allclose(scores[1:], whole, atol=1e-4)


def test_a_new_span_rereads_the_text_before_it(tiny_causal_lm, tmp_path, monkeypatch):
    import torch

    compressor = perplexity_compressor(tiny_causal_lm, tmp_path)
    ids = torch.tensor(compressor._engine.tokenizer(LONG_TEXT, add_special_tokens=False).input_ids)
    monkeypatch.setattr(compressor_module, "SCORE_SPAN", 40)
    monkeypatch.setattr(compressor_module, "SCORE_CONTEXT", 8)
    scores = token_surprisal(compressor._engine, ids)
    assert len(ids) > 81 and torch.isfinite(scores[1:]).all()
    # Tokens 41-80 are scored by a fresh cache that has read tokens 33-40 first.
    segment = ids[33:81].unsqueeze(0)
    alone = compressor._engine.get_ppl("", "token", segment, torch.ones_like(segment))
    assert torch.allclose(scores[41:81], alone[7:], atol=1e-4)


def test_forced_positions_are_the_tokens_overlapping_each_occurrence():
    # Tokens: "the" " back" "ups" " and" " backups"; "backups" occurs at characters 4-10 and 16-22.
    offsets = [(0, 3), (3, 8), (8, 11), (11, 15), (15, 23)]
    context = "the backups and backups"
    assert forced_positions(offsets, context, ["backups"]) == [1, 2, 4]
    assert forced_positions(offsets, context, []) == []
    assert forced_positions(offsets, context, [""]) == []


def test_iterative_selection_still_runs_llmlingua_itself(tiny_causal_lm, tmp_path):
    compressor = perplexity_compressor(tiny_causal_lm, tmp_path, selection="iterative")
    assert compressor.selection == "iterative"
    out = compressor.compress(LONG_TEXT, rate=0.5, force_tokens=["backups"])
    assert abs(out.compressed_tokens / out.original_tokens - 0.5) <= 0.15 * 0.5
    assert out.prompt.count("backups") == LONG_TEXT.count("backups")


def test_each_selection_is_its_own_variant_so_cached_answers_never_cross(tiny_causal_lm, tmp_path):
    one_pass = perplexity_compressor(tiny_causal_lm, tmp_path / "a")
    iterative = perplexity_compressor(tiny_causal_lm, tmp_path / "b", selection="iterative")
    assert (one_pass.variant, iterative.variant) == ("perplexity/one_pass", "perplexity/iterative")
    assert Compressor.unusable("no model").variant is None
