"""The V2 contract between kembed's parts: tensor names, dtypes, parameters, and codecs.

The transformer and the eventing service import this module; nothing else crosses packages.
Everything is built on kserve's own ``InferRequest``/``InferResponse`` so REST JSON, REST binary
and gRPC all decode the same way.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    to_http_parameters,
)
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

if TYPE_CHECKING:
    from kembed.model_spec import ModelSpec

TEXT = "text"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"

BYTES = "BYTES"
INT64 = "INT64"
FP32 = "FP32"

NORMALIZE = "normalize"
DIMENSIONS = "dimensions"
PROMPT_NAME = "prompt_name"
PROMPT = "prompt"


def input_metadata(tokens: bool = True) -> list[dict[str, Any]]:
    """What `/v2/models/{name}` lists as inputs: `text`, or (where accepted) the two token tensors."""
    text = [{"name": TEXT, "datatype": BYTES, "shape": [-1]}]
    if not tokens:
        return text
    return [
        *text,
        {"name": INPUT_IDS, "datatype": INT64, "shape": [-1, -1]},
        {"name": ATTENTION_MASK, "datatype": INT64, "shape": [-1, -1]},
    ]


def output_metadata(dimension: int) -> list[dict[str, Any]]:
    return [{"name": EMBEDDING, "datatype": FP32, "shape": [-1, dimension]}]


def metadata_parameters(spec: ModelSpec | None) -> dict[str, Any]:
    """What `/v2/models/{name}` adds as `parameters`: the prompts a request may name."""
    if spec is None:
        return {}
    return {
        "prompt_names": sorted(spec.prompts),
        "default_prompt_name": spec.default_prompt_name,
        "dimension": spec.dimension,
        "max_seq_length": spec.max_seq_length,
    }


@dataclass(frozen=True)
class EmbedOptions:
    """Per-request parameters. ``None`` means "use the model's default"."""

    normalize: bool | None = None
    dimensions: int | None = None
    prompt_name: str | None = None  # one of the model's prompts (config_sentence_transformers.json)
    prompt: str | None = None  # a raw prompt string; "" = none, even where the model has a default

    def to_parameters(self) -> dict[str, bool | int | str]:
        params: dict[str, bool | int | str] = {}
        if self.normalize is not None:
            params[NORMALIZE] = self.normalize
        if self.dimensions is not None:
            params[DIMENSIONS] = self.dimensions
        if self.prompt_name is not None:
            params[PROMPT_NAME] = self.prompt_name
        if self.prompt is not None:
            params[PROMPT] = self.prompt
        return params

    def resolve_prompt(self, prompts: Mapping[str, str], default_prompt_name: str | None) -> str:
        """The text to put before each input, as sentence-transformers' `encode(prompt_name=, prompt=)`
        chooses it: the raw prompt, else the named one, else the model's default prompt, else none."""
        if self.prompt is not None and self.prompt_name is not None:
            raise InvalidInput(f"send parameter '{PROMPT_NAME}' or '{PROMPT}', not both")
        if self.prompt is not None:
            return self.prompt
        name = self.prompt_name if self.prompt_name is not None else default_prompt_name
        if name is None:
            return ""
        if name not in prompts:
            known = ", ".join(repr(known) for known in sorted(prompts)) or "none"
            raise InvalidInput(f"parameter '{PROMPT_NAME}' {name!r} is not one of this model's prompts: {known}")
        return prompts[name]


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidInput(f"parameter '{name}' must be a boolean, got {value!r}")


def parse_options(parameters: Mapping[str, Any] | None, max_dimension: int) -> EmbedOptions:
    """Reads `normalize`, `dimensions`, `prompt_name` and `prompt` from V2 request parameters (REST
    dict or gRPC map). With `text` inputs the prompt is put before each text; with token inputs the
    ids are taken to start with it already (the transformer put it there)."""
    if not parameters:
        return EmbedOptions()
    params = to_http_parameters(parameters)
    normalize = params.get(NORMALIZE)
    dimensions = params.get(DIMENSIONS)
    prompt_name = params.get(PROMPT_NAME)
    prompt = params.get(PROMPT)
    for name, value in ((PROMPT_NAME, prompt_name), (PROMPT, prompt)):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"parameter '{name}' must be a string, got {value!r}")
    if normalize is not None:
        normalize = _parse_bool(NORMALIZE, normalize)
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise InvalidInput(
                f"parameter '{DIMENSIONS}' must be an integer, got {dimensions!r}"
            )
        if not 1 <= dimensions <= max_dimension:
            raise InvalidInput(
                f"parameter '{DIMENSIONS}' must be between 1 and {max_dimension}, got {dimensions}"
            )
    return EmbedOptions(normalize=normalize, dimensions=dimensions, prompt_name=prompt_name, prompt=prompt)


def _check_batch(name: str, count: int, max_items: int) -> None:
    if count == 0:
        raise InvalidInput(f"input '{name}' is empty: expected at least one item")
    if count > max_items:
        raise InvalidInput(
            f"input '{name}' has {count} items: at most {max_items} are accepted per request"
        )


def decode_texts(tensor: InferInput, max_items: int) -> list[str]:
    """`text` BYTES [B] as Python strings. REST JSON gives `str`, gRPC and binary give `bytes`."""
    if tensor.datatype != BYTES:
        raise InvalidInput(f"input '{TEXT}' must have datatype {BYTES}, got {tensor.datatype}")
    if len(tensor.shape) != 1:
        raise InvalidInput(f"input '{TEXT}' must have shape [B], got {list(tensor.shape)}")
    try:
        values = tensor.as_numpy().reshape(-1)
    except (ValueError, TypeError, struct.error) as exc:
        raise InvalidInput(f"input '{TEXT}' data does not match its declared shape {list(tensor.shape)}") from exc
    _check_batch(TEXT, len(values), max_items)
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, bytes | np.bytes_):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input '{TEXT}' item {index} is not valid UTF-8") from exc
        if not isinstance(value, str):
            raise InvalidInput(f"input '{TEXT}' item {index} must be a string")
        if not value.strip():
            raise InvalidInput(f"input '{TEXT}' item {index} is empty")
        texts.append(value)
    return texts


def _all_int64(values: list) -> bool:
    """JSON data of an INT64 tensor: (nested lists of) ints, no bools, each within int64."""
    stack = [values]
    while stack:
        for value in stack.pop():
            if type(value) is list:
                stack.append(value)
            elif type(value) is not int or not -(2**63) <= value < 2**63:
                return False
    return True


def _int_matrix(tensor: InferInput) -> np.ndarray:
    if tensor.datatype != INT64:
        raise InvalidInput(
            f"input '{tensor.name}' must have datatype {INT64}, got {tensor.datatype}"
        )
    if len(tensor.shape) != 2:
        raise InvalidInput(f"input '{tensor.name}' must have shape [B, L], got {tensor.shape}")
    if isinstance(tensor.data, list) and not _all_int64(tensor.data):
        # numpy would cast 101.7 to 101 and true to 1 without a word
        raise InvalidInput(
            f"input '{tensor.name}' must hold integers in [-2^63, 2^63) (INT64), not floats, booleans or larger numbers"
        )
    try:
        array = tensor.as_numpy()
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise InvalidInput(
            f"input '{tensor.name}' data does not match shape {list(tensor.shape)} of integers"
        ) from exc
    return array


def decode_tokens(request: InferRequest, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids` and `attention_mask` INT64 [B, L], checked against each other."""
    ids_tensor = request.get_input_by_name(INPUT_IDS)
    mask_tensor = request.get_input_by_name(ATTENTION_MASK)
    if ids_tensor is None or mask_tensor is None:
        raise InvalidInput(f"inputs '{INPUT_IDS}' and '{ATTENTION_MASK}' must be sent together")
    ids = _int_matrix(ids_tensor)
    mask = _int_matrix(mask_tensor)
    if ids.shape != mask.shape:
        raise InvalidInput(
            f"input '{ATTENTION_MASK}' shape {list(mask.shape)} must equal "
            f"'{INPUT_IDS}' shape {list(ids.shape)}"
        )
    _check_batch(INPUT_IDS, ids.shape[0], max_items)
    if ids.shape[1] == 0:
        raise InvalidInput(f"input '{INPUT_IDS}' has no tokens: expected shape [B, L] with L > 0")
    if not np.isin(mask, (0, 1)).all():
        raise InvalidInput(f"input '{ATTENTION_MASK}' must contain only 0 and 1")
    if (mask.sum(axis=1) == 0).any():
        raise InvalidInput(f"input '{ATTENTION_MASK}' has a row with no tokens")
    return ids, mask


def require_v2(payload: object) -> InferRequest:
    """kserve hands models a dict for V1 (`/v1/models/{name}:predict`) calls; kembed speaks V2 only."""
    if not isinstance(payload, InferRequest):
        raise InvalidInput("kembed speaks the V2 protocol: POST /v2/models/{name}/infer")
    return payload


def parse_rest_request(body: bytes) -> InferenceRequest:
    """A V2 REST JSON body. Anything malformed is the client's error: InvalidInput, which kserve answers
    with 400 over REST and INVALID_ARGUMENT over gRPC (where the same mistakes fail in decoding), not
    FastAPI's 422."""
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(f"malformed V2 request: {describe_errors(exc.errors(include_input=False))}") from None


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's errors as one line that names each field (a body-level error has no field)."""
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid"))
        if where == "inputs" and error.get("type") == "missing":
            message += ' (a V2 body is {"inputs": [...]}; V1 {"instances": [...]} is not served)'
        problems.append(f"'{where}': {message}" if where else message)
    return "; ".join(problems) or "invalid request"


def check_input_names(request: InferRequest) -> None:
    names = [tensor.name for tensor in request.inputs]
    known = {TEXT, INPUT_IDS, ATTENTION_MASK}
    unknown = sorted(set(names) - known)
    if unknown:
        raise InvalidInput(
            f"unknown input(s) {unknown}: expected '{TEXT}' or '{INPUT_IDS}' + '{ATTENTION_MASK}'"
        )
    if not names:
        raise InvalidInput(f"no inputs: expected '{TEXT}' or '{INPUT_IDS}' + '{ATTENTION_MASK}'")
    if TEXT in names and len(names) > 1:
        raise InvalidInput(f"send either '{TEXT}' or '{INPUT_IDS}' + '{ATTENTION_MASK}', not both")
    if len(names) != len(set(names)):
        raise InvalidInput(f"duplicate input names {names}")


def text_request(
    model_name: str, texts: Sequence[str], options: EmbedOptions = EmbedOptions()
) -> InferRequest:
    tensor = InferInput(TEXT, [len(texts)], BYTES, data=list(texts))
    return InferRequest(
        model_name=model_name,
        infer_inputs=[tensor],
        request_id=str(uuid.uuid4()),
        parameters=options.to_parameters() or None,
    )


def token_request(
    model_name: str,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    options: EmbedOptions = EmbedOptions(),
    binary: bool = True,
) -> InferRequest:
    """Token tensors for the predictor. ``binary`` sends raw little-endian bytes (V2 binary
    extension over REST, raw contents over gRPC) instead of JSON number arrays."""
    tensors = []
    for name, array in ((INPUT_IDS, input_ids), (ATTENTION_MASK, attention_mask)):
        tensor = InferInput(name, list(array.shape), INT64)
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64), binary_data=binary)
        tensors.append(tensor)
    return InferRequest(
        model_name=model_name,
        infer_inputs=tensors,
        request_id=str(uuid.uuid4()),
        parameters=options.to_parameters() or None,
        request_outputs=[RequestedOutput(EMBEDDING, {"binary_data": True})] if binary else None,
    )


def embedding_response(
    request: InferRequest, model_name: str, embeddings: np.ndarray
) -> InferResponse:
    """`embedding` FP32 [B, D]; binary on the wire when the caller asked for binary outputs."""
    output = InferOutput(EMBEDDING, list(embeddings.shape), FP32)
    output.set_data_from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32), binary_data=True)
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=[output],
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )


def embeddings_from_response(response: InferResponse) -> np.ndarray:
    output = response.get_output_by_name(EMBEDDING)
    if output is None:
        raise InvalidInput(f"response has no output named '{EMBEDDING}'")
    return output.as_numpy().astype(np.float32, copy=False)
