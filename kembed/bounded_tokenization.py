"""Tokenize only as much of a long text as truncation keeps, and keep long work off the event loop.

A fast tokenizer normalizes, pre-tokenizes and splits the whole text before it truncates: a 7 MB
text costs seconds of CPU and a gigabyte of encodings for 256 kept tokens. A prefix gives exactly
the same kept tokens when every kept token comes from a pre-token ("word") that is whole in the
prefix and unaffected by where the prefix ends. The tokenizer pipelines kembed serves (BERT
normalizers and pre-tokenizer, Metaspace, ByteLevel, Whitespace, NFC/NFKC, lowercasing) decide a
word from that word's characters and at most the characters next to it; so the prefix is proven
long enough when it holds more than the kept tokens and the last kept token lies at least two
words before the prefix's last word (the last word may be cut; the one before it may be a
whitespace run whose split depends on what follows). Otherwise the prefix grows fourfold, up to the
whole text. Truncation from the left works the same on suffixes. `tests/test_bounded_tokenization.py`
checks the result against tokenizing the whole text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TypeVar

from tokenizers import Encoding, Tokenizer

# First guess of characters per kept token: 4-5 for English, 1 for CJK; a too short first piece
# only costs one more (fourfold) try.
CHARS_PER_TOKEN = 12
# Requests with more characters than this are tokenized on a worker thread (the tokenizer releases
# the GIL), so other requests are not kept waiting; smaller ones stay inline, where a thread hop
# would cost more than the tokenization itself.
INLINE_CHARS = 32_768

T = TypeVar("T")


class PrefixEncoder:
    """`encode_batch` of `backend` (with its truncation) on the shortest prefix of each text that
    provably gives the same ids as the whole text."""

    def __init__(self, backend: Tokenizer):
        self._backend = backend

    @cached_property
    def _probe(self) -> Tokenizer:
        """The backend without truncation, copied when a text first needs it (a copy costs ~50 ms of
        a cold start, and only texts far over the limit use it)."""
        probe = Tokenizer.from_str(self._backend.to_str())
        probe.no_truncation()
        probe.no_padding()
        return probe

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        truncation = self._backend.truncation
        if not truncation:
            return self._backend.encode_batch(list(texts))
        processor = self._backend.post_processor
        specials = processor.num_special_tokens_to_add(False) if processor is not None else 0
        kept = truncation["max_length"] - specials
        from_left = truncation.get("direction") == "left"
        start = max(kept, 1) * CHARS_PER_TOKEN
        pieces = [text if len(text) <= start else self._piece(text, kept, start, from_left) for text in texts]
        return self._backend.encode_batch(pieces)

    def _piece(self, text: str, kept: int, length: int, from_left: bool) -> str:
        while length < len(text):
            piece = text[-length:] if from_left else text[:length]
            if self._enough(piece, kept, from_left):
                return piece
            length *= 4
        return text

    def _enough(self, piece: str, kept: int, from_left: bool) -> bool:
        words = self._probe.encode(piece, add_special_tokens=False).word_ids
        if len(words) <= kept or kept < 1:
            return False
        if from_left:
            first_kept, first = words[-kept], words[0]
            return first_kept is not None and first is not None and first_kept > first + 1
        last_kept, last = words[kept - 1], words[-1]
        return last_kept is not None and last is not None and last_kept < last - 1


async def run_sized(work: Callable[[], T], chars: int) -> T:
    """`work()` inline when it is small, else on the loop's default executor."""
    if chars <= INLINE_CHARS:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)
