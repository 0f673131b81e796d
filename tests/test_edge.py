"""The edge REST and gRPC share, in-process: real kserve DataPlane, kembed's real gRPC server on
127.0.0.1, kserve's real gRPC client, the real batcher and the real transformer (bundled tokenizer).

The model behind the predictor-side server holds its forward pass at a gate, so its queue is full
exactly when the test says: a full queue must answer 429 + Retry-After over REST and
RESOURCE_EXHAUSTED + `retry-after` trailing metadata over gRPC, be counted by protocol and status,
and reach the transformer's clients as 429 with Retry-After (REST, OpenAI) or RESOURCE_EXHAUSTED (gRPC).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from kserve import Model
from kserve.errors import InvalidInput, ModelNotFound, invalid_input_handler, model_not_found_handler
from kserve.inference_client import InferenceGRPCClient
from kserve.model_repository import ModelRepository
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from prometheus_client import REGISTRY

from kembed import contract, transport
from kembed.client import GRPC, EmbeddingClient, UpstreamError
from kembed.edge import ClientErrorsOneLine, EdgeDataPlane
from kembed.errors import RETRY_AFTER_METADATA
from kembed.grpc_server import GRPCServer
from kembed.launch import free_port
from predictor.batcher import Batcher, BatchLimits
from transformer import openai_api
from transformer.model import EmbeddingTransformer
from transformer.settings import TransformerSettings

PREDICTOR, STACK = "edge-predictor", "edge-stack"
QUEUE_SIZE = 4


class GatedModel(Model):
    """A kserve Model over the real batcher whose forward pass waits at `gate`."""

    def __init__(self, name: str):
        super().__init__(name)
        self.gate = threading.Event()
        self.batcher = Batcher(self._forward, BatchLimits(max_batch_size=QUEUE_SIZE, queue_size=QUEUE_SIZE))
        self.ready = True

    def _forward(self, rows: list[np.ndarray], prompt_lengths: list[int]) -> np.ndarray:
        self.gate.wait(20)
        return np.ones((len(rows), 8), dtype=np.float32)

    def admit(self) -> None:
        self.batcher.admit()

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        contract.check_input_names(payload)
        if payload.get_input_by_name(contract.TEXT) is not None:
            count = len(contract.decode_texts(payload.get_input_by_name(contract.TEXT), 64))
        else:
            count = len(contract.decode_tokens(payload, 64)[0])
        embeddings = await self.batcher.embed([np.arange(3) for _ in range(count)])
        return contract.embedding_response(payload, self.name, embeddings)


def dataplane_for(model: Model) -> EdgeDataPlane:
    registry = ModelRepository()
    registry.update(model)
    return EdgeDataPlane(registry)


def rest_app(model: Model, dataplane: EdgeDataPlane, fast_infer: bool = True, app: FastAPI | None = None
             ) -> httpx.AsyncClient:
    app = app or FastAPI()
    transport.install(app, dataplane)
    app.add_exception_handler(InvalidInput, invalid_input_handler)  # what kserve's RESTServer adds
    app.add_exception_handler(ModelNotFound, model_not_found_handler)
    if isinstance(model, EmbeddingTransformer):
        openai_api.install(app, model)
    edge = transport.edge_app(app, model.name, 1 << 20, dataplane, fast_infer=fast_infer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://edge", timeout=30)


@asynccontextmanager
async def grpc_server(dataplane: EdgeDataPlane) -> AsyncIterator[str]:
    port = free_port()
    server = GRPCServer(port, dataplane, ModelRepositoryExtension(dataplane.model_registry), grace_period=1)
    task = asyncio.create_task(server.start(2))
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
    try:
        yield target
    finally:
        await server.stop()
        await task


def text_request(model_name: str, texts: list[str]) -> InferRequest:
    return InferRequest(model_name=model_name, infer_inputs=[InferInput(contract.TEXT, [len(texts)], "BYTES",
                                                                        data=texts)])


def v2_json(texts: list[str]) -> dict:
    return {"inputs": [{"name": contract.TEXT, "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def count(model: str, protocol: str, status: int) -> float:
    labels = {"model": model, "protocol": protocol, "status": str(status)}
    return REGISTRY.get_sample_value("kembed_requests_total", labels) or 0.0


@pytest.fixture(scope="module")
def stack_transformer() -> EmbeddingTransformer:
    model = EmbeddingTransformer(STACK, TransformerSettings(predictor_host="unused"))
    model.load()
    return model


def test_full_queue_is_429_over_rest_and_resource_exhausted_over_grpc_up_to_the_transformer(stack_transformer):
    predictor = GatedModel(PREDICTOR)
    predictor_plane = dataplane_for(predictor)
    stack_plane = dataplane_for(stack_transformer)
    before = {key: count(*key) for key in [(PREDICTOR, "grpc", 429), (PREDICTOR, "rest", 429),
                                           (PREDICTOR, "grpc", 200), (STACK, "rest", 429), (STACK, "grpc", 429),
                                           (STACK, "openai", 429)]}

    async def run() -> None:
        async with grpc_server(predictor_plane) as predictor_target, grpc_server(stack_plane) as stack_target:
            stack_transformer.client = EmbeddingClient(predictor_target, PREDICTOR, protocol=GRPC)
            grpc_client = InferenceGRPCClient(predictor_target)
            stack_grpc = InferenceGRPCClient(stack_target)
            async with rest_app(predictor, predictor_plane) as predictor_rest, \
                    rest_app(stack_transformer, stack_plane) as stack_rest:
                running = asyncio.ensure_future(grpc_client.infer(text_request(PREDICTOR, ["held"])))
                await asyncio.sleep(0.2)  # its item is in the pass held at the gate
                queued = asyncio.ensure_future(grpc_client.infer(text_request(PREDICTOR, ["q"] * QUEUE_SIZE)))
                while predictor.batcher.waiting < QUEUE_SIZE:
                    await asyncio.sleep(0.01)

                # the predictor itself, over gRPC and REST
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await grpc_client.infer(text_request(PREDICTOR, ["one more"]))
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "queue is full" in refused.value.details()
                retry_after = dict(refused.value.trailing_metadata())[RETRY_AFTER_METADATA]
                assert int(retry_after) >= 1
                rest = await predictor_rest.post(f"/v2/models/{PREDICTOR}/infer", json=v2_json(["one more"]))
                assert rest.status_code == 429 and int(rest.headers["retry-after"]) >= 1, rest.text

                # the kernel's client reads the retry delay from the trailing metadata
                with pytest.raises(UpstreamError) as upstream:
                    await stack_transformer.client.embed_texts(["one more"])
                assert (upstream.value.status, upstream.value.retry_after) == (429, int(retry_after))

                # the transformer's clients, whose predictor hop is gRPC
                v2 = await stack_rest.post(f"/v2/models/{STACK}/infer", json=v2_json(["via the stack"]))
                assert v2.status_code == 429, v2.text
                assert v2.headers["retry-after"] == retry_after
                openai = await stack_rest.post("/v1/embeddings", json={"model": STACK, "input": "via openai"})
                assert openai.status_code == 429 and openai.headers["retry-after"] == retry_after
                assert openai.json()["error"]["type"] == "rate_limit_error"
                with pytest.raises(grpc.aio.AioRpcError) as stack_refused:
                    await stack_grpc.infer(text_request(STACK, ["via grpc"]))
                assert stack_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert dict(stack_refused.value.trailing_metadata())[RETRY_AFTER_METADATA] == retry_after

                predictor.gate.set()
                assert (await running).outputs[0].as_numpy().shape == (1, 8)
                assert (await queued).outputs[0].as_numpy().shape == (QUEUE_SIZE, 8)
            await grpc_client.close()
            await stack_grpc.close()
            await stack_transformer.client.close()

    asyncio.run(run())
    after = {key: count(*key) for key in before}
    # gRPC: the storm's refusal, the kernel client's, and the transformer's three hops
    assert after[(PREDICTOR, "grpc", 429)] - before[(PREDICTOR, "grpc", 429)] == 5
    assert after[(PREDICTOR, "rest", 429)] - before[(PREDICTOR, "rest", 429)] == 1
    assert after[(PREDICTOR, "grpc", 200)] - before[(PREDICTOR, "grpc", 200)] == 2
    for protocol in ("rest", "grpc", "openai"):
        assert after[(STACK, protocol, 429)] - before[(STACK, protocol, 429)] == 1, protocol


def test_client_errors_are_400_counted_and_logged_as_one_line_over_grpc_and_rest(caplog):
    predictor = GatedModel(PREDICTOR)
    predictor.gate.set()
    plane = dataplane_for(predictor)
    before = count(PREDICTOR, "grpc", 400), count(PREDICTOR, "rest", 400)
    kserve_logger = logging.getLogger("kserve")
    one_line = ClientErrorsOneLine()
    kserve_logger.addFilter(one_line)

    async def run() -> None:
        async with grpc_server(plane) as target:
            client = InferenceGRPCClient(target)
            bad = InferRequest(model_name=PREDICTOR, infer_inputs=[InferInput("nope", [1], "BYTES", data=["x"])])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.infer(bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown input(s) ['nope']" in refused.value.details()
            await client.close()
        async with rest_app(predictor, plane) as rest:
            body = {"inputs": [{"name": "nope", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
            response = await rest.post(f"/v2/models/{PREDICTOR}/infer", json=body)
            assert response.status_code == 400 and "unknown input(s) ['nope']" in response.json()["error"]

    try:
        with caplog.at_level(logging.INFO, logger="kserve"):
            asyncio.run(run())
    finally:
        kserve_logger.removeFilter(one_line)
    assert (count(PREDICTOR, "grpc", 400), count(PREDICTOR, "rest", 400)) == (before[0] + 1, before[1] + 1)
    lines = [r for r in caplog.records if r.name == "kserve" and "nope" in r.getMessage()]
    assert len(lines) == 2, "kserve's interceptor and its REST handler each log the refusal"
    assert all(r.exc_info is None and r.levelno == logging.INFO for r in lines)
    assert all(r.getMessage().startswith("400 InvalidInput: unknown input(s)") for r in lines)


@pytest.mark.parametrize("fast_infer", [True, False])
def test_v2_infer_skips_fastapis_stack_and_answers_as_the_routed_path(fast_infer: bool) -> None:
    """The fast path answers infer in front of FastAPI (a middleware on the app never sees it, but
    sees metadata), with the same bodies and statuses as the routed path, errors included."""
    predictor = GatedModel(PREDICTOR)
    predictor.gate.set()
    app, seen = FastAPI(), []

    @app.middleware("http")
    async def record_path(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    async def run() -> list[tuple[int, dict]]:
        answers = []
        async with rest_app(predictor, dataplane_for(predictor), fast_infer, app) as rest:
            for path, body in ((f"/v2/models/{PREDICTOR}/infer", v2_json(["a", "b"])),
                               (f"/v2/models/{PREDICTOR}/infer", {"inputs": [{"name": "nope", "datatype": "BYTES",
                                                                             "shape": [1], "data": ["x"]}]}),
                               ("/v2/models/nobody/infer", v2_json(["a"]))):
                response = await rest.post(path, json=body)
                answers.append((response.status_code, response.json()))
            assert (await rest.get(f"/v2/models/{PREDICTOR}")).status_code == 200
        return answers

    (ok, bad, missing) = asyncio.run(run())
    assert ok[0] == 200 and ok[1]["outputs"][0]["shape"] == [2, 8]
    assert bad[0] == 400 and "unknown input(s) ['nope']" in bad[1]["error"]
    assert missing[0] == 404 and "nobody" in missing[1]["error"]
    infer_seen = [path for path in seen if path.endswith("/infer")]
    assert infer_seen == ([] if fast_infer else [f"/v2/models/{PREDICTOR}/infer"] * 2 + ["/v2/models/nobody/infer"])
    assert f"/v2/models/{PREDICTOR}" in seen


def middleware_classes(app: FastAPI) -> list[type]:
    """The classes in the app's built middleware chain, outermost first."""
    classes, layer = [], app.middleware_stack
    while layer is not None and not isinstance(layer, type(app.router)):
        classes.append(type(layer))
        layer = getattr(layer, "app", None)
    return classes


@pytest.mark.parametrize("timing_left_out", [True, False])
def test_kserves_request_timing_middleware_is_left_out_unless_asked_for(timing_left_out: bool) -> None:
    from kserve.protocol.rest.server import PrintTimings
    from timing_asgi import TimingMiddleware
    from timing_asgi.integrations import StarletteScopeToName

    app = FastAPI()
    app.add_api_route("/ping", lambda: {"ok": True})
    if timing_left_out:
        transport.without_request_timing(app)  # installed before kserve adds its middleware, as serve() does
    app.add_middleware(TimingMiddleware, client=PrintTimings(),  # what kserve's RESTServer adds
                       metric_namer=StarletteScopeToName(prefix="kserve.io", starlette_app=app))
    async def ping() -> dict:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
            return (await client.get("/ping")).json()

    assert asyncio.run(ping()) == {"ok": True}
    assert (TimingMiddleware in middleware_classes(app)) is not timing_left_out


SERVICE = "/inference.GRPCInferenceService"
MODEL_INFER, MODEL_METADATA = f"{SERVICE}/ModelInfer", f"{SERVICE}/ModelMetadata"
NOT_PROTOBUF = b"\xff\xff\xff\xff\x0f"  # field 0x1fffffff with wire type 7: no protobuf message parses it
TRUNCATED = {
    MODEL_INFER: pb.ModelInferRequest(model_name=PREDICTOR, id="x" * 40).SerializeToString()[:20],
    MODEL_METADATA: pb.ModelMetadataRequest(name=PREDICTOR * 4).SerializeToString()[:20],
}
MESSAGE_TYPE = {MODEL_INFER: "inference.ModelInferRequest", MODEL_METADATA: "inference.ModelMetadataRequest"}


@pytest.mark.parametrize("method", [MODEL_INFER, MODEL_METADATA])
def test_a_grpc_body_that_is_not_the_methods_message_is_invalid_argument_naming_it(method: str, caplog):
    """grpc itself answers an unparsable body UNKNOWN ("Exception deserializing request") and logs
    a traceback; kembed answers INVALID_ARGUMENT, as REST answers a malformed body 400, logs one line,
    counts a ModelInfer as a gRPC 400, and serves the next valid request as usual."""
    predictor = GatedModel(PREDICTOR)
    predictor.gate.set()
    plane = dataplane_for(predictor)
    before = count("unknown", "grpc", 400)

    async def run() -> None:
        async with grpc_server(plane) as target, grpc.aio.insecure_channel(target) as channel:
            raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for body in (NOT_PROTOBUF, TRUNCATED[method]):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await raw(body)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
                assert f"request body is not a valid {MESSAGE_TYPE[method]}" in refused.value.details()
            client = InferenceGRPCClient(target)
            assert (await client.infer(text_request(PREDICTOR, ["fine"]))).outputs[0].as_numpy().shape == (1, 8)
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ModelMetadata(pb.ModelMetadataRequest(name=PREDICTOR))).name == PREDICTOR
            await client.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    counted = count("unknown", "grpc", 400) - before
    assert counted == (2 if method == MODEL_INFER else 0), "a ModelInfer is counted as REST counts a bad body"
    refusals = [r for r in caplog.records if MESSAGE_TYPE[method] in r.getMessage()]
    assert len(refusals) == 2, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in refusals)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "no traceback, no error line"
