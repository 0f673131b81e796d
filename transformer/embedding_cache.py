"""Optional cache of finished embeddings: a repeated text with the same parameters never reaches
the predictor. Off by default (it trades memory for predictor work; token ids are far smaller).

Keyed by text, tokenizer settings, `normalize`, `dimensions` and the prompt; each entry keeps the vector and
the text's token count, so OpenAI `usage` stays exact on a hit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kembed.contract import EmbedOptions
from transformer import metrics
from transformer.lru import ByteBoundedLRU


@dataclass(frozen=True)
class CachedEmbedding:
    vector: np.ndarray
    tokens: int


EmbeddingKey = tuple[str, tuple[int, bool], bool | None, int | None, str | None, str | None]


class EmbeddingCache:
    def __init__(self, max_entries: int, max_bytes: int, model_name: str):
        self.cache: ByteBoundedLRU[EmbeddingKey, CachedEmbedding] = ByteBoundedLRU(max_entries, max_bytes)
        self.metrics = metrics.CacheMetrics("embedding", model_name, lambda: len(self.cache), lambda: self.cache.bytes)

    @property
    def enabled(self) -> bool:
        return self.cache.enabled

    @staticmethod
    def key(text: str, settings: tuple[int, bool], options: EmbedOptions) -> EmbeddingKey:
        return (text, settings, options.normalize, options.dimensions, options.prompt_name, options.prompt)

    def lookup(
        self, texts: Sequence[str], settings: tuple[int, bool], options: EmbedOptions
    ) -> list[CachedEmbedding | None]:
        found = [self.cache.get(self.key(text, settings, options)) for text in texts]
        hits = sum(entry is not None for entry in found)
        self.metrics.hits.inc(hits)
        self.metrics.misses.inc(len(texts) - hits)
        return found

    def store(
        self, text: str, settings: tuple[int, bool], options: EmbedOptions, vector: np.ndarray, tokens: int
    ) -> None:
        vector = np.array(vector, dtype=np.float32)  # a copy: the cache must not share the response's buffer
        vector.setflags(write=False)
        size = sys.getsizeof(text) + vector.nbytes
        evicted = self.cache.put(self.key(text, settings, options), CachedEmbedding(vector, tokens), size)
        self.metrics.evictions.inc(evicted)
