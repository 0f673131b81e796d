"""OpenAI-compatible `POST /v1/embeddings` on the transformer's own FastAPI app.

OpenAI clients (the `openai` package, LangChain's and LlamaIndex's OpenAI embeddings) work
unchanged with `base_url=http://host/v1`. Responses and errors have OpenAI's exact shapes;
`encoding_format="base64"` is little-endian float32 bytes, as OpenAI sends (and as the `openai`
client asks for by default). Token-array inputs are refused: this server tokenizes itself.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from kembed import contract
from transformer.model import EmbeddingTransformer
from transformer.upstream import PredictorError

PATHS = ("/v1/embeddings", "/openai/v1/embeddings")


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: StrictStr | list[StrictStr]
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def response(self) -> Response:
        if self.status == 429:
            kind = "rate_limit_error"
        elif self.status >= 500:
            kind = "server_error"
        else:
            kind = "invalid_request_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return json_response({"error": error}, self.status, headers)


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def parse_request(body: bytes, max_items: int) -> EmbeddingsRequest:
    """The request, or a 400 that names the offending field."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    raw_input = payload.get("input")
    if isinstance(raw_input, list) and any(isinstance(item, int | list) for item in raw_input):
        raise OpenAIError(
            400, "'input' as token arrays is not supported: send a string or a list of strings", "input",
            "unsupported_input",
        )
    try:
        request = EmbeddingsRequest.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        raise OpenAIError(400, f"'{field}': {error['msg']}", field, "invalid_value") from None
    texts = request.input if isinstance(request.input, list) else [request.input]
    if not texts:
        raise OpenAIError(400, "'input' is empty: expected at least one string", "input", "invalid_value")
    if len(texts) > max_items:
        raise OpenAIError(
            400, f"'input' has {len(texts)} items: at most {max_items} are accepted per request", "input",
            "invalid_value",
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise OpenAIError(400, f"'input' item {index} is empty", "input", "invalid_value")
    return request


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector.tolist()


async def create_embeddings(model: EmbeddingTransformer, http_request: Request) -> Response:
    try:
        request = parse_request(await http_request.body(), model.settings.max_items_per_request)
        if request.model != model.name:
            raise OpenAIError(404, f"The model '{request.model}' does not exist; this server serves "
                              f"'{model.name}'", "model", "model_not_found")
        if not model.ready or model.spec is None:
            raise OpenAIError(503, f"model '{model.name}' is not ready", None, "model_not_ready", "1")
        texts = request.input if isinstance(request.input, list) else [request.input]
        try:
            options = contract.parse_options(
                {contract.DIMENSIONS: request.dimensions} if request.dimensions is not None else None,
                model.spec.dimension,
            )
        except InvalidInput as exc:
            raise OpenAIError(400, str(exc), "dimensions", "invalid_value") from None
        try:
            embedded = await model.embed(texts, options, dict(http_request.headers), field="input")
        except InvalidInput as exc:
            raise OpenAIError(400, str(exc), "input", "invalid_value") from None
        except PredictorError as exc:
            raise OpenAIError(exc.status, exc.message, None, f"predictor_{exc.status}", exc.retry_after) from None
    except OpenAIError as exc:
        return exc.response()
    tokens = sum(embedded.token_counts)
    body: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode_vector(vector, request.encoding_format)}
            for index, vector in enumerate(embedded.embeddings)
        ],
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_response(body)


def install(app: FastAPI, model: EmbeddingTransformer) -> None:
    """Mounts the endpoint (before kserve's ModelServer.start adds its own routes)."""

    async def embeddings(request: Request) -> Response:
        return await create_embeddings(model, request)

    for path in PATHS:
        app.add_api_route(path, embeddings, methods=["POST"], include_in_schema=True, summary="OpenAI embeddings")
