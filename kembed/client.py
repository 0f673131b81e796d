"""One V2 embeddings client for every kembed part that calls a model server (the transformer's
predictor hop, the eventing service's InferenceService calls).

It drives kserve's own clients (REST JSON, REST with the V2 binary extension, gRPC) and turns each
way a call can fail into one `UpstreamError`: the HTTP status the caller should answer with, the
matching gRPC code, `retry_after` when a retry can succeed, and a `reason` word for metrics. The
upstream's own 4xx (a 429 with its Retry-After, or over gRPC `RESOURCE_EXHAUSTED` with kembed's
`retry-after` trailing metadata) passes through; what is the upstream's fault becomes 502/503/504.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import grpc
import httpx
import numpy as np
from kserve.errors import InvalidInput
from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferRequest, InferResponse

from kembed import contract
from kembed.contract import EmbedOptions
from kembed.errors import GRPC_TO_HTTP, RETRY_AFTER_METADATA, ServingError

REST = "rest"
GRPC = "grpc"
DEFAULT_RETRY_AFTER = 1  # seconds: a pod that is starting or being replaced


class UpstreamError(ServingError):
    """A failed V2 call. ``reason``: rejected (4xx), overloaded (429), unavailable (unreachable, not
    ready), timeout, failed (the upstream's 5xx) or bad_response (an answer that is no embedding)."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None):
        super().__init__(status, message, retry_after)
        self.reason = reason


def _seconds(value: str | bytes | None) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return int(value) if value and value.strip().isdigit() else None


def _http_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return response.text.strip()


def from_http(exc: httpx.HTTPError, target: str, default_retry_after: int = DEFAULT_RETRY_AFTER) -> UpstreamError:
    """``default_retry_after``: the delay to report when a retry can succeed and the upstream named none."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        status = response.status_code
        message = _http_message(response)
        retry_after = _seconds(response.headers.get("retry-after"))
        if status == 429:
            return UpstreamError(429, "overloaded", message, retry_after or default_retry_after)
        if status < 500:
            return UpstreamError(status, "rejected", message, retry_after)
        if status == 503:
            return UpstreamError(503, "unavailable", f"{target} is not ready: {message}",
                                 retry_after or default_retry_after)
        return UpstreamError(502, "failed", f"{target} failed with {status}: {message}")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamError(503, "unavailable", f"{target} is unreachable: {exc or type(exc).__name__}",
                             default_retry_after)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(504, "timeout", f"{target} did not answer in time ({type(exc).__name__})")
    return UpstreamError(503, "unavailable", f"{target} is unreachable: {type(exc).__name__}: {exc}",
                         default_retry_after)


def from_grpc(exc: grpc.RpcError, target: str, default_retry_after: int = DEFAULT_RETRY_AFTER) -> UpstreamError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(code)
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    retry_after = next((_seconds(v) for k, v in (trailing or ()) if k == RETRY_AFTER_METADATA), None)
    status = GRPC_TO_HTTP.get(code, 502)
    if status == 429:
        return UpstreamError(429, "overloaded", details, retry_after or default_retry_after)
    if status == 503:
        return UpstreamError(503, "unavailable", f"{target} is unreachable or not ready: {details}",
                             retry_after or default_retry_after)
    if status == 504:
        return UpstreamError(504, "timeout", f"{target} did not answer in time: {details}")
    if status == 502:
        return UpstreamError(502, "failed", f"{target} failed with {code.name}: {details}")
    return UpstreamError(status, "rejected", details)


class EmbeddingClient:
    """V2 calls to one model server. ``target`` is a base URL for REST (`http://host:port`) or
    `host:port` for gRPC; ``binary`` sends token tensors with the V2 binary extension over REST;
    ``default_retry_after`` is the delay reported for an overloaded or unreachable upstream that named none."""

    def __init__(
        self,
        target: str,
        model_name: str,
        protocol: str = REST,
        timeout_s: float = 30.0,
        retries: int = 0,
        binary: bool = True,
        use_ssl: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        default_retry_after: int = DEFAULT_RETRY_AFTER,
    ):
        if protocol not in (REST, GRPC):
            raise ValueError(f"protocol must be {REST!r} or {GRPC!r}, got {protocol!r}")
        self.target = target
        self.model_name = model_name
        self.protocol = protocol
        self.binary = binary
        self.timeout_s = timeout_s
        self.retries = retries
        self.use_ssl = use_ssl
        self.transport = transport
        self.default_retry_after = default_retry_after
        # Made on first use: a gRPC channel belongs to the event loop it was made in, and the
        # servers' loop starts after the client is configured.
        self._rest: InferenceRESTClient | None = None
        self._grpc: InferenceGRPCClient | None = None

    def _client(self) -> InferenceRESTClient | InferenceGRPCClient:
        if self.protocol == GRPC:
            if self._grpc is None:
                # kserve's `retries` is gRPC's maxAttempts, which must be 0 (no policy) or at least 2.
                attempts = self.retries + 1 if self.retries > 0 else 0
                self._grpc = InferenceGRPCClient(
                    self.target, use_ssl=self.use_ssl, timeout=self.timeout_s, retries=attempts
                )
            return self._grpc
        if self._rest is None:
            # kserve's own transformer reads the CA bundle that the KServe controller sets for TLS hops.
            ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._rest = InferenceRESTClient(RESTConfig(
                protocol="v2", timeout=self.timeout_s, retries=self.retries, transport=self.transport,
                verify=ca_bundle or True,
            ))
        return self._rest

    async def close(self) -> None:
        if self._rest is not None:
            await self._rest.close()
        if self._grpc is not None:
            await self._grpc.close()
        self._rest = self._grpc = None

    async def infer(self, request: InferRequest, headers: Mapping[str, str] | None = None) -> InferResponse:
        """One V2 call; every failure is an `UpstreamError`."""
        client = self._client()
        try:
            if isinstance(client, InferenceGRPCClient):
                response = await client.infer(request, headers=tuple((headers or {}).items()))
            else:
                response = await client.infer(self.target, request, model_name=self.model_name,
                                              headers=dict(headers or {}))
        except httpx.HTTPError as exc:
            raise from_http(exc, self.target, self.default_retry_after) from exc
        except grpc.RpcError as exc:
            raise from_grpc(exc, self.target, self.default_retry_after) from exc
        except (ValueError, KeyError, TypeError, IndexError, InvalidInput) as exc:
            raise UpstreamError(502, "bad_response", f"{self.target} sent an unreadable V2 response: {exc}") from exc
        if not isinstance(response, InferResponse):
            raise UpstreamError(502, "bad_response", f"{self.target} did not answer with a V2 response")
        return response

    async def embed_texts(self, texts: Sequence[str], options: EmbedOptions | None = None,
                          headers: Mapping[str, str] | None = None) -> np.ndarray:
        """`text` BYTES [B] in, `embedding` [B, D] out."""
        request = contract.text_request(self.model_name, texts, options or EmbedOptions())
        return self._embeddings(await self.infer(request, headers), len(texts))

    async def embed_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                           options: EmbedOptions | None = None,
                           headers: Mapping[str, str] | None = None) -> np.ndarray:
        """`input_ids` + `attention_mask` INT64 [B, L] in, `embedding` [B, D] out."""
        request = contract.token_request(
            self.model_name, input_ids, attention_mask, options or EmbedOptions(), binary=self.binary
        )
        return self._embeddings(await self.infer(request, headers), len(input_ids))

    def _embeddings(self, response: InferResponse, expected: int) -> np.ndarray:
        try:
            embeddings = contract.embeddings_from_response(response)
        except (ValueError, InvalidInput) as exc:
            raise UpstreamError(502, "bad_response", f"{self.target} answered without embeddings: {exc}") from exc
        if embeddings.ndim != 2 or embeddings.shape[0] != expected:
            raise UpstreamError(502, "bad_response",
                                f"{self.target} answered {list(embeddings.shape)} embeddings for {expected} texts")
        return embeddings
