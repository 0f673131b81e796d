"""OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models` on the transformer's FastAPI app.

OpenAI clients (the `openai` package, LangChain's and LlamaIndex's OpenAI embeddings) work with
`base_url=http://host/v1`. Responses and errors have OpenAI's exact shapes, on every status;
`encoding_format="base64"` is little-endian float32 bytes, as OpenAI sends (and as the `openai`
client asks for by default). Token-array inputs are refused with a 400: the ids a client sends are
its own tokenizer's (LangChain's are tiktoken's), and embedding them with this model's vocabulary
would return a wrong vector with status 200.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from kembed import contract
from kembed.client import UpstreamError
from kembed.disconnect import CLIENT_CLOSED, ClientGone, unless_disconnected
from kembed.errors import openai_error_type
from kembed.metrics import OPENAI, Accounting
from transformer.model import EmbeddingTransformer

PREFIXES = ("/v1", "/openai/v1")
logger = logging.getLogger("kembed.transformer")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
TOKEN_ARRAYS = (
    "'input' as token arrays is not supported: this server tokenizes text with its model's own tokenizer, "
    "so send strings. LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)"
)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: StrictStr | list[StrictStr]
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    # kembed's extensions: one of the model's prompts by name, or a raw prompt ("" = none)
    prompt_name: StrictStr | None = None
    prompt: StrictStr | None = None


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def response(self, headers: dict[str, str] | None = None) -> Response:
        error = {"message": self.message, "type": openai_error_type(self.status), "param": self.param,
                 "code": self.code}
        if self.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(self.retry_after)}
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
        raise OpenAIError(400, TOKEN_ARRAYS, "input", "unsupported_input")
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
    """`POST /v1/embeddings`, counted as protocol "openai" by the edge's accounting."""
    with Accounting(model.name, OPENAI) as accounting:
        response = await _create_embeddings(model, http_request)
        accounting.status = response.status_code
        return response


async def _create_embeddings(model: EmbeddingTransformer, http_request: Request) -> Response:
    try:
        request = parse_request(await http_request.body(), model.settings.max_items_per_request)
        if request.model != model.name:
            raise OpenAIError(404, f"The model '{request.model}' does not exist; this server serves "
                              f"'{model.name}'", "model", "model_not_found")
        if not model.ready or model.spec is None:
            raise OpenAIError(503, f"model '{model.name}' is not ready", None, "model_not_ready", 1)
        texts = request.input if isinstance(request.input, list) else [request.input]
        try:
            options = contract.parse_options(
                {contract.DIMENSIONS: request.dimensions} if request.dimensions is not None else None,
                model.spec.dimension,
            )
        except InvalidInput as exc:
            raise OpenAIError(400, str(exc), "dimensions", "invalid_value") from None
        options = replace(options, prompt_name=request.prompt_name, prompt=request.prompt)
        try:
            options.resolve_prompt(model.spec.prompts, model.spec.default_prompt_name)
        except InvalidInput as exc:
            raise OpenAIError(400, str(exc), "prompt_name", "invalid_value") from None
        try:
            embedded = await unless_disconnected(
                model.embed(texts, options, dict(http_request.headers), field="input"), http_request
            )
        except InvalidInput as exc:
            raise OpenAIError(400, str(exc), "input", "invalid_value") from None
        except UpstreamError as exc:
            raise OpenAIError(exc.status, exc.message, None, f"predictor_{exc.status}", exc.retry_after) from None
    except OpenAIError as exc:
        (logger.error if exc.status >= 500 else logger.info)("%d %s: %s", exc.status, exc.code, exc.message)
        return exc.response()
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
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


def model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "kembed"}


def install(app: FastAPI, model: EmbeddingTransformer) -> None:
    """Mounts the routes before kserve's ModelServer.start adds its own, so these win: `GET /v1/models`
    lists the served model in OpenAI's shape (kserve's V1 list is `{"models": [...]}`, which OpenAI's
    clients read as empty). Each path also answers with a trailing slash (instead of a 307 redirect)
    and answers other methods with an OpenAI-shaped 405."""
    created = int(time.time())

    async def embeddings(request: Request) -> Response:
        return await create_embeddings(model, request)

    async def list_models() -> Response:
        return json_response({"object": "list", "data": [model_object(model.name, created)]})

    async def retrieve_model(model_id: str) -> Response:
        if model_id != model.name:
            message = f"The model '{model_id}' does not exist; this server serves '{model.name}'"
            return OpenAIError(404, message, "model", "model_not_found").response()
        return json_response(model_object(model.name, created))

    # (path, endpoint, method, methods that get 405): POST /v1/models/{name}:predict stays kserve's V1 route.
    routes = [
        ("/embeddings", embeddings, "POST", [m for m in METHODS if m != "POST"]),
        ("/models", list_models, "GET", [m for m in METHODS if m != "GET"]),
        ("/models/{model_id}", retrieve_model, "GET", [m for m in METHODS if m not in ("GET", "POST")]),
    ]
    for prefix in PREFIXES:
        for suffix, endpoint, method, refused in routes:
            for path in (prefix + suffix, prefix + suffix + "/"):
                app.add_api_route(path, endpoint, methods=[method], include_in_schema=not path.endswith("/"))
                app.add_api_route(path, method_not_allowed(method), methods=refused, include_in_schema=False)


def method_not_allowed(allowed: str) -> Any:
    async def endpoint(request: Request) -> Response:
        message = f"{request.method} is not allowed on {request.url.path}: use {allowed}"
        return OpenAIError(405, message, None, "method_not_allowed").response({"Allow": allowed})

    return endpoint
