"""Tokenizing a prefix of a long text gives exactly the ids of tokenizing all of it."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from kembed.bounded_tokenization import CHARS_PER_TOKEN, PrefixEncoder
from kembed.cli import bundled_model_dir
from kembed.tokenization import TextTokenizer

# Pieces that stress word boundaries: whitespace runs, combining marks, ligatures and characters
# that normalize to several (NFKC), CJK (a word per character for BERT), emoji, digits, punctuation.
PIECES = [
    "the", "Cat", "naïve", "e\u0301", "ﬁne", "㍿", "\ufdfa", "漢字", "かな", "🙂", "1234567", "x" * 130,
    "...", "!?", "'s", "İstanbul", "straße", "\u200b", " ", "  ", "\t", "\n", " \n ", "\u00a0",
]


def long_text(seed: int, length: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < length:
        piece = rng.choice(PIECES)
        if not piece.isspace() and rng.random() < 0.7:
            piece += " "
        parts.append(piece)
        size += len(piece)
    return "".join(parts)


def trained(model: models.Model, trainer: trainers.Trainer, pre: pre_tokenizers.PreTokenizer,
            normalizer: normalizers.Normalizer) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre
    tokenizer.train_from_iterator([long_text(seed, 2000) for seed in range(20)], trainer)
    return tokenizer


def byte_level_bpe() -> Tokenizer:
    tokenizer = trained(models.BPE(), trainers.BpeTrainer(vocab_size=300, show_progress=False),
                        pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFC())
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def metaspace_unigram() -> Tokenizer:
    return trained(models.Unigram(), trainers.UnigramTrainer(vocab_size=200, show_progress=False,
                                                             unk_token="<unk>", special_tokens=["<unk>"]),
                   pre_tokenizers.Metaspace(), normalizers.NFKC())


def bert() -> Tokenizer:
    return TextTokenizer(bundled_model_dir(), 256)._backend


@pytest.mark.parametrize("make", [bert, byte_level_bpe, metaspace_unigram])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_prefix_gives_the_whole_texts_ids(make, direction: str) -> None:
    tokenizer = make()
    tokenizer.no_padding()
    limit = 64
    tokenizer.enable_truncation(limit, direction=direction)
    bounded = PrefixEncoder(tokenizer)
    texts = [long_text(seed, random.Random(seed).randrange(limit * CHARS_PER_TOKEN, 40_000)) for seed in range(60)]
    texts += ["x" * 50_000, "漢" * 20_000, " " * 20_000 + "end", "a " * 20_000]
    expected = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    assert [encoding.ids for encoding in bounded.encode_batch(texts)] == expected


def test_ids_match_transformers_on_long_texts() -> None:
    """The predictor's ids for long texts are the ids sentence-transformers feeds its model."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(bundled_model_dir())
    tokenizer = TextTokenizer(bundled_model_dir(), 256)
    texts = [long_text(seed, 30_000) for seed in range(10)] + ["word " * 100_000]
    expected = reference(texts, truncation=True, max_length=256)["input_ids"]
    assert [row.tolist() for row in tokenizer.encode(texts)] == expected
