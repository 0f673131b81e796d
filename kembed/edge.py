"""The edge REST and gRPC share: admission, request accounting and client errors, in the DataPlane.

kserve's REST route and its gRPC servicer both end in `DataPlane.infer`, so that is where kembed
admits a request (a full queue answers before any tokenizing: 429 + Retry-After over REST,
RESOURCE_EXHAUSTED + `retry-after` metadata over gRPC), counts it in flight, and records it by
protocol and status. Only the byte-size check (413) stays at the transport (`kembed.transport`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
from typing import Any

from kserve import Model, ModelServer, model_server
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.errors import InvalidInput
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferRequest
from starlette.requests import ClientDisconnect

from kembed import contract, transport
from kembed.disconnect import client_disconnect_handler
from kembed.errors import status_of
from kembed.grpc_server import GRPCServer
from kembed.health import ServingHealth
from kembed.metrics import GRPC, REST, Accounting, record
from kembed.read_timeouts import timed_protocol
from kembed.repository import ClosedRepository, RepositoryDisabled, repository_disabled_handler
from kembed.shutdown import drain_on_sigterm


class EdgeDataPlane(ServingHealth):
    """kserve's DataPlane with kembed's edge: decoding failures are the client's (400, where kserve
    lets ValueError, KeyError or struct.error escape as a 500), a model's `admit()` is asked
    before it runs, and every request is accounted for by protocol. Health says whether a model is
    ready (`ServingHealth`); metadata carries the model's `metadata_parameters()`."""

    def label(self, model_name: str | None) -> str:
        """The model label of a request: a name the client made up is not a new metric series."""
        return model_name if model_name and self.model_registry.get_model(model_name) is not None else "unknown"

    def decode(
        self,
        body: Any,
        headers: Any,
        protocol_version: str = PredictorProtocol.REST_V1.value,
        model_name: str | None = None,
    ) -> Any:
        """REST only (gRPC requests arrive decoded). Also takes a V2 JSON body as raw bytes, parsed
        by pydantic straight from JSON; a failure is counted here, as it never reaches `infer`."""
        v2 = protocol_version == PredictorProtocol.REST_V2.value
        try:
            if v2 and isinstance(body, bytes) and INFERENCE_CONTENT_LENGTH_HEADER not in (headers or {}):
                body = contract.parse_rest_request(body)
            try:
                return super().decode(body, headers, protocol_version, model_name)
            except InvalidInput:
                raise
            except Exception as exc:
                raise InvalidInput(f"malformed V2 request: {exc}") from exc
        except Exception as exc:
            record(self.label(model_name), REST, status_of(exc))
            raise

    async def infer(self, model_name: str, request: Any, headers: dict[str, str] | None = None) -> Any:
        protocol = GRPC if isinstance(request, InferRequest) and request.from_grpc else REST
        with Accounting(self.label(model_name), protocol):
            model = await self.get_model(model_name)
            admit = getattr(model, "admit", None)  # the predictor's: raises QueueFull while its queue is full
            if admit is not None:
                admit()
            return await super().infer(model_name, request, headers)

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        """kserve's metadata, plus the model's `metadata_parameters()` (its prompt names, say) as
        `parameters`: kserve's own REST and gRPC metadata carry only the tensors."""
        metadata = await super().model_metadata(model_name)
        extra = getattr(self.get_model_from_registry(model_name), "metadata_parameters", None)
        if callable(extra):
            metadata["parameters"] = extra()
        return metadata


class ClientErrorsOneLine(logging.Filter):
    """kserve logs every error it answers with a full traceback at ERROR, a client's mistake (4xx)
    included. This turns such a record into one line naming the status and the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = status_of(exc) if exc is not None else 500
        if status < 500:
            record.msg, record.args = "%d %s: %s", (status, type(exc).__name__, exc)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class EdgeModelServer(ModelServer):
    """kserve's ModelServer with kembed's DataPlane, and kembed's gRPC server in place of kserve's
    (whose interceptors are fixed; see `kembed.grpc_server`)."""

    def __init__(self, *, grpc_port: int, enable_grpc: bool, grpc_options: list[tuple[str, Any]],
                 http_protocol: type | None = None, **kwargs: Any):
        super().__init__(grpc_port=grpc_port, enable_grpc=False, **kwargs)
        self.http_protocol = http_protocol
        self.http_app: Any = None  # what uvicorn serves in place of kserve's app (transport.edge_app)
        self.dataplane = EdgeDataPlane(self.registered_models)
        self.kembed_grpc = (grpc_port, grpc_options) if enable_grpc else None
        self.grpc_server: GRPCServer | None = None

    def start(self, models: list[Model]) -> None:
        if self.kembed_grpc is not None:  # built now: the repository extension may have been replaced
            port, options = self.kembed_grpc
            self.grpc_server = GRPCServer(port, self.dataplane, self.model_repository_extension, self.grace_period,
                                          options)
            self.servers.append(self.grpc_server.start(self.max_threads))
        super().start(models)

    def setup_event_loop(self) -> None:
        """kserve builds its uvicorn config in start() and serves right after this: the place to
        put kembed's read timeouts (`kembed.read_timeouts`) on it (kserve exposes only keep-alive),
        and kembed's edge around kserve's app (uvicorn loads `config.app` when it starts serving)."""
        super().setup_event_loop()
        if self._rest_server is not None:
            if self.http_protocol is not None:
                self._rest_server.config.http = self.http_protocol
            if self.http_app is not None:
                self._rest_server.config.app = self.http_app

    def stop(self, sig: int) -> None:
        super().stop(sig)
        if self.grpc_server is not None:
            asyncio.get_running_loop().create_task(self.grpc_server.stop())


def serve(model: Model, args: argparse.Namespace, predictor_config: PredictorConfig | None = None) -> None:
    """Starts kserve's ModelServer for one loaded model, with kembed's edge installed.

    On SIGTERM uvicorn stops accepting connections and waits up to `--grace_period_seconds` for
    every request in flight, so everything already in the batcher's queue is answered before exit.
    """
    for name in ("kserve", "kserve.trace"):  # kserve's servers, and its clients (the transformer's hop)
        logging.getLogger(name).addFilter(ClientErrorsOneLine())
    server = EdgeModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        grpc_options=[
            ("grpc.max_send_message_length", args.grpc_max_send_message_length),
            ("grpc.max_receive_message_length", args.grpc_max_receive_message_length),
        ],
        workers=1,
        max_threads=args.max_threads,
        grace_period=args.grace_period_seconds,
        enable_latency_logging=args.enable_latency_logging or args.latency_logging,
        predictor_config=predictor_config,
        http_protocol=timed_protocol(args.header_timeout_seconds, args.body_timeout_seconds),
    )
    transport.install(model_server.app, server.dataplane)
    # With the access log on, infer goes through the app's middleware, where kserve's timing lines are.
    server.http_app = transport.edge_app(model_server.app, model.name, args.max_body_bytes, server.dataplane,
                                         fast_infer=not args.access_log)
    if not args.access_log:  # its timing lines are part of the access log
        transport.without_request_timing(model_server.app)
    model_server.app.add_exception_handler(ClientDisconnect, client_disconnect_handler)
    if callable(drain := getattr(model, "drain", None)):
        drain_on_sigterm(model_server.app, drain, args.grace_period_seconds)
    if not args.enable_model_repository:
        server.model_repository_extension = ClosedRepository()  # type: ignore[assignment]
        model_server.app.add_exception_handler(RepositoryDisabled, repository_disabled_handler)
    # The entry points pause the GC while importing and loading (see predictor/__main__.py). What
    # exists now lives as long as the process: freeze it, so collections while serving skip it.
    gc.freeze()
    gc.enable()
    server.start([model])
