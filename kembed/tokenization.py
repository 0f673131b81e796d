"""Text to token ids, the same way in the predictor and the transformer.

The transformer imports this module so that its ids are exactly the ids the predictor would make
itself. It drives the model's fast (Rust) tokenizer directly: no padding (the batcher pads per
length-grouped batch) and one batched call per request. Reading `tokenizer.json` with `tokenizers`
alone keeps `transformers` (seconds of imports) out of the transformer's cold start.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from kserve.errors import InvalidInput
from tokenizers import Encoding, Tokenizer, normalizers

from kembed.bounded_tokenization import PrefixEncoder, run_sized
from kembed.model_spec import ModelSpec


class TextTokenizer:
    """``truncation_side`` and ``lowercase`` are the model's (`ModelSpec.truncation_side`,
    `ModelSpec.do_lower_case`): sentence-transformers applies them on top of `tokenizer.json`."""

    def __init__(
        self,
        model_dir: str | Path,
        max_seq_length: int,
        truncate: bool = True,
        truncation_side: str = "right",
        lowercase: bool = False,
    ):
        self.max_seq_length = max_seq_length
        self.truncate = truncate
        model_dir = Path(model_dir)
        self._backend = load_fast_tokenizer(model_dir)
        padding = self._backend.padding or {}
        pad_token = _tokenizer_config(model_dir).get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        pad_names = (pad_token,) if isinstance(pad_token, str) else ()
        self.pad_id = int(padding.get("pad_id", self._first_known_id(*pad_names, "[PAD]", "<pad>")))
        self._backend.no_padding()
        if lowercase and not _lowercases(self._backend.normalizer):
            existing = [self._backend.normalizer] if self._backend.normalizer is not None else []
            self._backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *existing])
        # Without truncation we still cut at limit + 1: enough to see that a text is too long,
        # without tokenizing a megabyte of it.
        self._backend.enable_truncation(max_seq_length if truncate else max_seq_length + 1, direction=truncation_side)
        self._prefixes = PrefixEncoder(self._backend)
        self._special_ids = {i for i, token in self._backend.get_added_tokens_decoder().items() if token.special}
        self.prompt_length = lru_cache(maxsize=1024)(self._prompt_length)  # raw prompts come from clients
        self._prompt_ids = lru_cache(maxsize=1024)(lambda prompt: self._backend.encode(prompt).ids)

    @classmethod
    def for_model(cls, spec: ModelSpec, truncate: bool = True) -> TextTokenizer:
        """The model's tokenizer with its own length, truncation side and lowercasing."""
        return cls(spec.model_dir, spec.max_seq_length, truncate, spec.truncation_side, spec.do_lower_case)

    def _first_known_id(self, *tokens: str) -> int:
        ids = [self._backend.token_to_id(token) for token in tokens]
        return next((i for i in ids if i is not None), 0)

    @property
    def settings_key(self) -> tuple[int, bool]:
        """What the ids depend on besides the text (for caches keyed by text)."""
        return (self.max_seq_length, self.truncate)

    def _adds_no_tokens(self, encoding: Encoding, prompt: str) -> bool:
        """Whether a text added nothing to its row: only special tokens, or the prompt's row alone."""
        if not prompt:
            return all(encoding.special_tokens_mask)
        return encoding.ids == self._prompt_ids(prompt)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens a prompt puts at the start of a row, counted as sentence-transformers counts them
        for ``include_prompt=False``: the prompt tokenized alone, without a trailing special token
        (so a BERT prompt counts [CLS] and its words, not its [SEP])."""
        if not prompt:
            return 0
        ids = self._backend.encode(prompt).ids
        return len(ids) - 1 if ids and ids[-1] in self._special_ids else len(ids)

    async def encode_async(self, texts: Sequence[str], field: str = "text", prompt: str = "") -> list[np.ndarray]:
        """`encode`, off the event loop when the texts are long."""
        return await run_sized(lambda: self.encode(texts, field, prompt), sum(map(len, texts)))

    def encode(
        self, texts: Sequence[str], field: str = "text", prompt: str = "", positions: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """One row of ids per text, each text after ``prompt`` (as sentence-transformers prepends it).
        Errors name a text by its `positions` entry (default: its index)."""
        encodings = self._prefixes.encode_batch([prompt + text for text in texts] if prompt else texts)
        for index, encoding in enumerate(encodings):
            if self._adds_no_tokens(encoding, prompt):  # only zero-width or ignored characters: like ""
                position = positions[index] if positions else index
                raise InvalidInput(f"input '{field}' item {position} has no tokens (it is empty once normalized)")
        ids = [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]
        if not self.truncate:
            for index, row in enumerate(ids):
                if len(row) > self.max_seq_length:
                    position = positions[index] if positions else index
                    raise InvalidInput(
                        f"input '{field}' item {position} is longer than {self.max_seq_length} tokens and "
                        "truncation is off"
                    )
        return ids


def padded_length(longest: int, multiple: int = 1, allowed: Sequence[int] = ()) -> int:
    """The length a padded batch computes on: its longest row, rounded up to `multiple`; where
    `allowed` (sorted) is given, the first of those at least that long (the int8 runtime serves only
    the lengths its startup check passed)."""
    length = -(-longest // multiple) * multiple
    if not allowed:
        return length
    index = bisect_left(allowed, length)
    if index == len(allowed):
        raise ValueError(f"no allowed padded length holds {longest} tokens (allowed: {list(allowed)})")
    return allowed[index]


def pad_batch(
    rows: Sequence[np.ndarray], pad_id: int = 0, multiple: int = 1, allowed: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads ids to the longest row (rounded up to `multiple`, or to `allowed`, see
    `padded_length`: fewer distinct shapes, whose compiled kernels a graph runtime keeps); returns
    (input_ids, attention_mask) INT64 [B, L]."""
    length = padded_length(max(len(row) for row in rows), multiple, allowed)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
        mask[index, : len(row)] = 1
    return ids, mask


def padded_tokens(lengths: Sequence[int], multiple: int = 1, allowed: Sequence[int] = ()) -> int:
    """What a padded batch of these lengths computes on: rows x `padded_length` of the longest."""
    return len(lengths) * padded_length(max(lengths), multiple, allowed) if lengths else 0


def _tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    return config if isinstance(config, dict) else {}


def _lowercases(normalizer: normalizers.Normalizer | None) -> bool:
    return normalizer is not None and normalizer.normalize_str("KEMBED") == "kembed"


def load_fast_tokenizer(model_dir: Path) -> Tokenizer:
    """The directory's `tokenizer.json`; models that ship only a slow (vocab) tokenizer are
    converted by transformers once."""
    path = model_dir / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir} has no tokenizer.json and no fast tokenizer conversion")
    return tokenizer.backend_tokenizer
