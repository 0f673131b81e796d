"""The KServe transformer: text in, token ids to the predictor over V2, embeddings back.

The whole request is handled in `predict()` rather than split over preprocess/postprocess:
with the embedding cache on, some or all texts never reach the predictor, which kserve's
preprocess -> predict -> postprocess chain cannot express. The hop is the kernel's V2 client
(`kembed.client`: kserve's REST or gRPC client, from `--predictor_host`/`--predictor_protocol`), whose
`UpstreamError` already carries the status, gRPC code and Retry-After the client should get.
On SIGTERM, what is still waiting on the predictor when the grace period ends is answered 503
(`kembed.shutdown.ShutdownDeadline`) rather than cancelled into a 500 by uvicorn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model import append_forwardable_headers
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferRequest, InferResponse

from kembed import contract
from kembed.client import GRPC, REST, EmbeddingClient
from kembed.contract import EmbedOptions
from kembed.model_spec import ModelSpec, read_model_spec
from kembed.shutdown import ShutdownDeadline
from kembed.tokenization import TextTokenizer, pad_batch
from transformer import metrics
from transformer.embedding_cache import EmbeddingCache
from transformer.settings import TransformerSettings
from transformer.tokens import CachingTokenizer

logger = logging.getLogger("kembed.transformer")

@dataclass(frozen=True)
class Embedded:
    """Embeddings [B, D] in request order, and each text's token count (for OpenAI usage)."""

    embeddings: np.ndarray
    token_counts: list[int]


def predictor_client(model_name: str, config: PredictorConfig, binary: bool) -> EmbeddingClient:
    """The V2 client for the predictor kserve's flags (or KEMBED_* variables) point at."""
    grpc_hop = config.protocol == "grpc-v2"
    return EmbeddingClient(
        config.predictor_host if grpc_hop else config.predictor_base_url,
        model_name,
        protocol=GRPC if grpc_hop else REST,
        timeout_s=config.timeout,
        retries=config.retries,
        binary=binary,
        use_ssl=config.use_ssl,
    )


class EmbeddingTransformer(Model):
    def __init__(self, name: str, settings: TransformerSettings, client: EmbeddingClient | None = None):
        super().__init__(name)
        self.settings = settings
        self.client = client
        self.spec: ModelSpec | None = None
        self.tokens: CachingTokenizer | None = None
        self.embedding_cache: EmbeddingCache | None = None
        self.shutdown = ShutdownDeadline()

    def load(self) -> bool:
        """Loads the model's tokenizer with the predictor's own length settings; then ready."""
        settings = self.settings
        started = time.perf_counter()
        self.spec = read_model_spec(settings.model_path, "auto", settings.max_seq_length)
        tokenizer = TextTokenizer.for_model(self.spec, settings.truncate)
        self.tokens = CachingTokenizer(
            tokenizer, settings.tokenizer_cache_size, settings.tokenizer_cache_bytes, self.name
        )
        self.embedding_cache = EmbeddingCache(settings.embedding_cache_size, settings.embedding_cache_bytes, self.name)
        logger.info(
            "loaded tokenizer of %s (max_seq_length=%d, truncate=%s, dim=%d) in %.2fs; tokenizer cache %d entries/%d "
            "bytes; embedding cache %s",
            settings.model_dir, self.spec.max_seq_length, settings.truncate, self.spec.dimension,
            time.perf_counter() - started, settings.tokenizer_cache_size, settings.tokenizer_cache_bytes,
            f"{settings.embedding_cache_size} entries/{settings.embedding_cache_bytes} bytes"
            if self.embedding_cache.enabled else "off",
        )
        self.ready = True
        return self.ready

    def start(self) -> None:
        """kserve's default start() marks the model ready at once; ours is ready after load()."""

    def drain(self, seconds: float) -> None:
        """SIGTERM: requests unfinished in `seconds` are answered 503 then (see `kembed.edge.serve`)."""
        self.shutdown.drain(seconds)

    def validate(self, payload: object) -> InferRequest:
        """kserve's check reads a V1 body (`/v1/models/{name}:predict`) as a dict and fails with a 500
        on what arrives; the transformer takes V2 only, and says so with a 400."""
        return contract.require_v2(payload)

    def get_input_types(self) -> list[dict]:
        return contract.input_metadata(tokens=False)

    def get_output_types(self) -> list[dict]:
        return contract.output_metadata(self.spec.dimension if self.spec else -1)

    def metadata_parameters(self) -> dict:
        return contract.metadata_parameters(self.spec)

    async def predict(
        self,
        payload: InferRequest | dict,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        payload = contract.require_v2(payload)
        assert self.spec is not None
        contract.check_input_names(payload)
        text = payload.get_input_by_name(contract.TEXT)
        if text is None:
            raise InvalidInput(
                f"the transformer takes input '{contract.TEXT}' (BYTES [B]); send '{contract.INPUT_IDS}' + "
                f"'{contract.ATTENTION_MASK}' to the predictor itself"
            )
        options = contract.parse_options(payload.parameters, self.spec.dimension)
        texts = contract.decode_texts(text, self.settings.max_items_per_request)
        embedded = await self.embed(texts, options, headers)
        return contract.embedding_response(payload, self.name, embedded.embeddings)

    async def embed(
        self, texts: Sequence[str], options: EmbedOptions, headers: dict[str, str] | None, field: str = contract.TEXT
    ) -> Embedded:
        """Embeddings of ``texts``: cached ones from the embedding cache, the rest (each distinct
        text once) tokenized through the token cache and sent to the predictor in one request.
        The prompt is resolved here and sent to the predictor as a raw string, so both sides mean
        the same tokens by it (the predictor counts them for pooling that leaves the prompt out).
        After SIGTERM, `Unavailable` (503) if it cannot finish before the drain deadline."""
        async with self.shutdown.running():
            return await self._embed(texts, options, headers, field)

    async def _embed(
        self, texts: Sequence[str], options: EmbedOptions, headers: dict[str, str] | None, field: str
    ) -> Embedded:
        assert self.tokens is not None and self.embedding_cache is not None and self.spec is not None
        prompt = options.resolve_prompt(self.spec.prompts, self.spec.default_prompt_name)
        options = replace(options, prompt_name=None, prompt=prompt)
        settings = self.tokens.settings_key
        cache = self.embedding_cache
        found = cache.lookup(texts, settings, options) if cache.enabled else [None] * len(texts)
        first_index: dict[str, int] = {}
        for index, (text, entry) in enumerate(zip(texts, found, strict=True)):
            if entry is None and text not in first_index:
                first_index[text] = index
        vectors: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        if first_index:
            missing = list(first_index)
            rows = await self.tokens.encode(missing, field, positions=list(first_index.values()), prompt=prompt)
            ids, mask = pad_batch(rows, self.tokens.pad_id)
            embeddings = await self._forward(ids, mask, options, headers)
            for text, row, vector in zip(missing, rows, embeddings, strict=True):
                vectors[text] = vector
                counts[text] = len(row)
                if cache.enabled:
                    cache.store(text, settings, options, vector, len(row))
        dimension = next(iter(vectors.values())).shape[0] if vectors else found[0].vector.shape[0]
        out = np.empty((len(texts), dimension), dtype=np.float32)
        token_counts = []
        for index, (text, entry) in enumerate(zip(texts, found, strict=True)):
            if entry is None:
                out[index] = vectors[text]
                token_counts.append(counts[text])
            else:
                out[index] = entry.vector
                token_counts.append(entry.tokens)
        return Embedded(out, token_counts)

    async def _forward(
        self, ids: np.ndarray, mask: np.ndarray, options: EmbedOptions, headers: dict[str, str] | None
    ) -> np.ndarray:
        """One V2 call to the predictor; failures are the client's `UpstreamError`."""
        if self.client is None:
            raise RuntimeError("the transformer has no predictor client (--predictor_host)")
        started = time.perf_counter()
        try:
            return await self.client.embed_tokens(ids, mask, options, append_forwardable_headers(headers))
        finally:
            metrics.PREDICTOR_SECONDS.labels(model=self.name, protocol=self.client.protocol).observe(
                time.perf_counter() - started
            )
