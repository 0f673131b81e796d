"""The KServe predictor: V2 in, pooled embeddings out, through the dynamic batcher."""

from __future__ import annotations

import logging
import time

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from kembed import contract
from kembed.model_spec import ModelSpec, read_model_spec
from kembed.tokenization import TextTokenizer
from predictor import metrics
from predictor.batcher import Batcher
from predictor.postprocess import finish
from predictor.settings import PredictorSettings

logger = logging.getLogger("kembed.predictor")


class EmbeddingModel(Model):
    def __init__(self, name: str, settings: PredictorSettings):
        super().__init__(name)
        self.settings = settings
        self.spec: ModelSpec | None = None
        self.tokenizer: TextTokenizer | None = None
        self.batcher: Batcher | None = None
        self.device = "cpu"

    def load(self) -> bool:
        """Loads the runtime and runs one warm-up pass; only then is the model ready."""
        from predictor.backends import load_runtime
        from predictor.precision import GATE_TEXTS
        from predictor.resources import fit_thread_count, resolve_device, resolve_dtype

        started = time.perf_counter()
        settings = self.settings
        self.spec = read_model_spec(settings.model_path, settings.pooling, settings.max_seq_length)
        if settings.limits.max_batch_tokens < self.spec.max_seq_length:
            raise ValueError(
                f"max_batch_tokens ({settings.limits.max_batch_tokens}) must be at least "
                f"max_seq_length ({self.spec.max_seq_length})"
            )
        self.device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, self.device)
        threads = fit_thread_count(settings.threads)
        self.tokenizer = TextTokenizer.for_model(self.spec, settings.truncate)
        # The gate texts are cut at the limit whatever --truncate says: they check precision, not input.
        gate_tokenizer = self.tokenizer if settings.truncate else TextTokenizer.for_model(self.spec, truncate=True)
        encoder = load_runtime(
            self.spec, settings.backend, self.device, dtype, threads, self.tokenizer.pad_id,
            gate_rows=gate_tokenizer.encode(GATE_TEXTS), dtype_required=settings.dtype != "auto",
            openvino_hint=settings.openvino_hint, pad_to_multiple_of=settings.pad_to_multiple_of,
            openvino_cache_dir=settings.openvino_cache_dir, openvino_shape_cache=settings.openvino_shape_cache,
            openvino_layout=settings.openvino_layout, openvino_lone_pass=settings.openvino_lone_pass,
        )
        # The pass cost decides which lengths may share a padded batch; a packed batch costs its
        # tokens whatever the lengths, so there is nothing to measure (and the start is faster).
        measure = settings.pass_cost_tokens < 0 and not encoder.packed
        speed = encoder.measure_speed(settings.max_batch_size, settings.max_batch_tokens, pass_cost=measure)
        pass_cost = speed.pass_cost_tokens if measure else max(settings.pass_cost_tokens, 0.0)
        self.batcher = Batcher(
            encoder, settings.limits, self.name, pass_cost_tokens=pass_cost, cost=encoder.batch_cost,
            seconds_per_token=speed.seconds_per_token, parallel_passes=encoder.parallel_passes,
        )
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(model=self.name).set(seconds)
        if self.device.startswith("cuda"):
            metrics.GPU_MEMORY.labels(model=self.name).set_function(encoder.memory_bytes)
        logger.info(
            "loaded %s on %s (%s backend, %s, %d threads, %d parallel passes, pooling=%s, dim=%d, "
            "max_seq_length=%d, pass cost %.0f tokens) in %.2fs",
            settings.model_dir, self.device, encoder.backend, encoder.dtype, threads, encoder.parallel_passes,
            self.spec.pooling,
            self.spec.dimension, self.spec.max_seq_length, pass_cost, seconds,
        )
        self.ready = True
        return self.ready

    def start(self) -> None:
        """kserve's default start() marks the model ready at once; ours is ready after load()."""

    def drain(self, seconds: float) -> None:
        """SIGTERM: queued work that cannot finish in `seconds` is answered 503 now."""
        if self.batcher is not None:
            self.batcher.drain(seconds)

    def admit(self) -> None:
        """Raises QueueFull while the batcher's queue is full; kembed's DataPlane asks before `predict`,
        so a refused request costs no tokenizing (REST and gRPC alike)."""
        if self.batcher is not None:
            self.batcher.admit()

    def get_input_types(self) -> list[dict]:
        return contract.input_metadata()

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
        assert self.spec is not None and self.tokenizer is not None and self.batcher is not None
        contract.check_input_names(payload)
        options = contract.parse_options(payload.parameters, self.spec.dimension)
        prompt = options.resolve_prompt(self.spec.prompts, self.spec.default_prompt_name)
        max_items = self.settings.max_items_per_request
        text = payload.get_input_by_name(contract.TEXT)
        if text is not None:
            texts = contract.decode_texts(text, max_items)
            rows = await self.tokenizer.encode_async(texts, contract.TEXT, prompt)
        else:
            rows = self._rows_from_tokens(*contract.decode_tokens(payload, max_items))
        embeddings = await self.batcher.embed(rows, self.tokenizer.prompt_length(prompt))
        normalize = self.spec.normalize if options.normalize is None else options.normalize
        embeddings = finish(embeddings, normalize, options.dimensions)
        return contract.embedding_response(payload, self.name, embeddings)

    def _rows_from_tokens(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        """Unpads transformer-made token rows and checks them against the model's limits."""
        spec = self.spec
        assert spec is not None
        if ids.min() < 0 or ids.max() >= spec.vocab_size:
            raise InvalidInput(
                f"input '{contract.INPUT_IDS}' must hold token ids in [0, {spec.vocab_size})"
            )
        rows = []
        for index, (row_ids, row_mask) in enumerate(zip(ids, mask, strict=True)):
            row = row_ids[row_mask.astype(bool)]
            if len(row) > spec.max_seq_length:
                if not self.settings.truncate:
                    raise InvalidInput(
                        f"input '{contract.INPUT_IDS}' row {index} has {len(row)} tokens: at most "
                        f"{spec.max_seq_length} are accepted when truncation is off"
                    )
                row = np.concatenate([row[: spec.max_seq_length - 1], row[-1:]])
            rows.append(row)
        return rows
