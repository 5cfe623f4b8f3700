"""Tiny LLMLingua-2 token classifiers, made on the spot with random weights and a
tokenizer trained on the test's own text: the LLMLingua-2 code path with no model
hub. They say nothing about what the real models keep; only that the plumbing
around them is right.

Their tokenizers are kept small, so that most words split into several tokens:
then a word-boundary rule of the wrong family shows as cut or glued words.
"""

from __future__ import annotations

from pathlib import Path

# Small enough that most words of the text split into pieces.
VOCABULARY = 90
HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2)


def tiny_bert_classifier(folder: Path, text: str) -> Path:
    """A BertForTokenClassification with a WordPiece tokenizer ("##" continues a word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator([text], trainers.WordPieceTrainer(vocab_size=VOCABULARY, special_tokens=special))
    vocabulary = sorted(wordpiece.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocabulary))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **HIDDEN)
    BertForTokenClassification(config).save_pretrained(folder)
    return folder


def tiny_xlm_roberta_tokenizer(text: str):
    """A SentencePiece (unigram) tokenizer with XLM-RoBERTa's special tokens ("▁" starts a word)."""
    from tokenizers.implementations import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaTokenizerFast

    special = dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>")
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator([text], vocab_size=VOCABULARY, special_tokens=list(special.values()), unk_token="<unk>")
    return XLMRobertaTokenizerFast(tokenizer_object=unigram._tokenizer, cls_token="<s>", sep_token="</s>", **special)


def tiny_xlm_roberta_classifier(folder: Path, text: str) -> Path:
    """An XLMRobertaForTokenClassification with a SentencePiece tokenizer."""
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_xlm_roberta_tokenizer(text)
    tokenizer.save_pretrained(folder)
    # RoBERTa's positions start after the padding index: 512 tokens need 514 positions.
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1, **HIDDEN
    )
    XLMRobertaForTokenClassification(config).save_pretrained(folder)
    return folder
