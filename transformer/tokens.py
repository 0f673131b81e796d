"""Token ids with an LRU cache in front of the tokenizer.

Keyed by the exact text, the prompt before it and the tokenizer's settings (max length,
truncation), so a cached row is exactly what the predictor would make itself. Only a request's
misses reach the tokenizer, in one batched call; a text repeated inside one request is tokenized
once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from kembed.bounded_tokenization import run_sized
from kembed.tokenization import TextTokenizer
from transformer import metrics
from transformer.lru import ByteBoundedLRU

TokenKey = tuple[tuple[int, bool], str, str]  # (tokenizer settings, prompt, text)


class CachingTokenizer:
    def __init__(self, tokenizer: TextTokenizer, max_entries: int, max_bytes: int, model_name: str):
        self.tokenizer = tokenizer
        self.cache: ByteBoundedLRU[TokenKey, np.ndarray] = ByteBoundedLRU(max_entries, max_bytes)
        self.metrics = metrics.CacheMetrics("tokenizer", model_name, lambda: len(self.cache), lambda: self.cache.bytes)
        self.seconds = metrics.TOKENIZE_SECONDS.labels(model=model_name)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def settings_key(self) -> tuple[int, bool]:
        return self.tokenizer.settings_key

    async def encode(
        self, texts: Sequence[str], field: str, positions: Sequence[int] | None = None, prompt: str = ""
    ) -> list[np.ndarray]:
        """One read-only int64 row per text (unpadded), each text after ``prompt``. ``field`` and
        ``positions`` (each text's index in the client's request, default its index here) name the
        culprit in errors. The cache is used on the event loop; long misses are tokenized off it."""
        settings = self.settings_key
        rows: list[np.ndarray | None] = [None] * len(texts)
        misses: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            row = self.cache.get((settings, prompt, text))
            if row is None:
                misses.setdefault(text, []).append(index)
            else:
                rows[index] = row
        missed = sum(len(indices) for indices in misses.values())
        self.metrics.hits.inc(len(texts) - missed)
        if misses:
            self.metrics.misses.inc(missed)
            started = time.perf_counter()
            encoded = await run_sized(
                lambda: self._encode_misses(misses, field, positions, prompt), sum(map(len, misses))
            )
            self.seconds.observe(time.perf_counter() - started)
            evicted = 0
            for (text, indices), row in zip(misses.items(), encoded, strict=True):
                row.setflags(write=False)
                evicted += self.cache.put((settings, prompt, text), row, sys.getsizeof(text) + row.nbytes)
                for index in indices:
                    rows[index] = row
            self.metrics.evictions.inc(evicted)
        return rows  # type: ignore[return-value]

    def _encode_misses(
        self, misses: dict[str, list[int]], field: str, positions: Sequence[int] | None, prompt: str
    ) -> list[np.ndarray]:
        """Errors name each text by its index in the client's request, not among the misses."""
        first = [indices[0] for indices in misses.values()]
        return self.tokenizer.encode(
            list(misses), field, prompt, [positions[i] for i in first] if positions else first
        )
