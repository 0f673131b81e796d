"""The predictor as users reach it: a real kserve ModelServer on 127.0.0.1 with the bundled model."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from kembed import contract
from kembed.launch import Server
from tests.conftest import MODEL_NAME
from tests.reference import cosine_rows, reference_embeddings, reference_tokens

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Kubernetes scales the embedding service down to zero when idle.",
    "A canary rollout sends ten percent of traffic to the new model version.",
]


def infer_url(server: Server, model: str = MODEL_NAME) -> str:
    return f"{server.url}/v2/models/{model}/infer"


def text_payload(texts: list[str], **parameters: object) -> dict:
    body: dict = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    if parameters:
        body["parameters"] = parameters
    return body


def embed(server: Server, texts: list[str], **parameters: object) -> np.ndarray:
    response = httpx.post(infer_url(server), json=text_payload(texts, **parameters), timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "embedding" and output["datatype"] == "FP32"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_text_input_matches_reference(predictor: Server) -> None:
    got = embed(predictor, TEXTS)
    assert got.shape == (3, 384)
    assert cosine_rows(got, reference_embeddings(TEXTS)).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_token_input_matches_reference_json_and_binary(predictor: Server) -> None:
    ids, mask = reference_tokens(TEXTS)
    expected = reference_embeddings(TEXTS)
    for binary in (False, True):
        request = contract.token_request(MODEL_NAME, ids, mask, binary=binary)
        body, json_length = request.to_rest()
        headers = {}
        if json_length:
            headers = {"inference-header-content-length": str(json_length), "content-type": "application/octet-stream"}
            response = httpx.post(infer_url(predictor), content=body, headers=headers, timeout=60)
        else:
            response = httpx.post(infer_url(predictor), json=body, timeout=60)
        assert response.status_code == 200, response.text
        # kembed's V2 route answers, not kserve's (registered after it), which sends binary without a type
        assert response.headers["content-type"] == ("application/octet-stream" if binary else "application/json")
        length = int(response.headers.get("inference-header-content-length", len(response.content)))
        got = contract.embeddings_from_response(InferResponse.from_bytes(response.content, length))
        assert cosine_rows(got, expected).min() >= 0.999, f"binary={binary}"


def test_normalize_false_returns_raw_mean_pooling(predictor: Server) -> None:
    got = embed(predictor, TEXTS, normalize=False)
    raw = reference_embeddings(TEXTS, normalize=False)
    np.testing.assert_allclose(got, raw, rtol=1e-3, atol=1e-4)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


def test_dimensions_cut_then_renormalize(predictor: Server) -> None:
    got = embed(predictor, TEXTS, dimensions=64)
    assert got.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    raw = reference_embeddings(TEXTS, normalize=False)[:, :64]
    assert cosine_rows(got, raw).min() >= 0.999


def test_model_metadata_lists_inputs_and_outputs(predictor: Server) -> None:
    metadata = httpx.get(f"{predictor.url}/v2/models/{MODEL_NAME}").json()
    inputs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    assert inputs["text"]["datatype"] == "BYTES" and inputs["text"]["shape"] == [-1]
    assert inputs["input_ids"]["datatype"] == "INT64" and inputs["attention_mask"]["shape"] == [-1, -1]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


def test_grpc_bytes_input(predictor: Server) -> None:
    async def call() -> np.ndarray:
        client = InferenceGRPCClient(f"127.0.0.1:{predictor.grpc_port}")
        tensor = InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=True)
        response = await client.infer(InferRequest(model_name=MODEL_NAME, infer_inputs=[tensor]))
        await client.close()
        return contract.embeddings_from_response(response)

    got = asyncio.run(call())
    assert cosine_rows(got, reference_embeddings(TEXTS)).min() >= 0.999


def test_concurrent_mixed_requests_each_get_their_own_embeddings(predictor: Server) -> None:
    words = [
        "embedding",
        "vector",
        "serverless",
        "knative",
        "kserve",
        "batch",
        "latency",
        "token",
        "model",
        "cluster",
        "request",
        "canary",
        "revision",
        "autoscaler",
        "queue",
        "tensor",
        "python",
        "transformer",
        "pooling",
        "cosine",
        "similarity",
    ]
    rng = random.Random(7)
    requests = [
        [
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 120))) + f" #{i}-{j}"
            for j in range(rng.randint(1, 8))
        ]
        for i in range(32)  # ~130 texts: several full batches (max_batch_size 32), requests split across them
    ]

    async def run() -> list[np.ndarray]:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(texts: list[str]) -> np.ndarray:
                response = await client.post(infer_url(predictor), json=text_payload(texts))
                assert response.status_code == 200, response.text
                output = response.json()["outputs"][0]
                return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])

            return await asyncio.gather(*(one(texts) for texts in requests))

    results = asyncio.run(run())
    flat_texts = [text for texts in requests for text in texts]
    expected = reference_embeddings(flat_texts)
    got = np.concatenate(results)
    assert got.shape == expected.shape
    assert cosine_rows(got, expected).min() >= 0.999


BAD_INPUTS = [
    ({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, "unknown input"),
    ({"inputs": []}, "no inputs"),
    ({"inputs": [{"name": "text", "shape": [1], "datatype": "INT64", "data": [1]}]}, "datatype BYTES"),
    ({"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}, "empty"),
    ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["   "]}]}, "item 0 is empty"),
    (
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
        "does not match its declared shape",
    ),
    (
        {"inputs": [{"name": "text", "shape": [300], "datatype": "BYTES", "data": ["a"] * 300}]},
        "at most 256",
    ),
    (
        {
            "inputs": [
                {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [101, 7592, 102]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            ]
        },
        "must equal 'input_ids' shape",
    ),
    (
        {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [101, 7592, 102]}]},
        "must be sent together",
    ),
    (
        {
            "inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 99999999]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            ]
        },
        "token ids in [0, 30522)",
    ),
    (
        {
            "inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            ]
        },
        "datatype INT64",
    ),
    (
        {
            "inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [0, 0]},
            ]
        },
        "no tokens",
    ),
    ({**text_payload(["hi"]), "parameters": {"dimensions": 0}}, "between 1 and 384"),
    ({**text_payload(["hi"]), "parameters": {"dimensions": 385}}, "between 1 and 384"),
    ({**text_payload(["hi"]), "parameters": {"dimensions": "many"}}, "must be an integer"),
    ({**text_payload(["hi"]), "parameters": {"normalize": "perhaps"}}, "must be a boolean"),
]


@pytest.mark.parametrize(("body", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_400_naming_the_problem(predictor: Server, body: dict, message: str) -> None:
    response = httpx.post(infer_url(predictor), json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_non_utf8_bytes_are_400(predictor: Server) -> None:
    tensor = InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"\xff\xfe bad"], dtype=np.object_), binary_data=True)
    body, json_length = InferRequest(model_name=MODEL_NAME, infer_inputs=[tensor]).to_rest()
    response = httpx.post(
        infer_url(predictor),
        content=body,
        headers={"inference-header-content-length": str(json_length), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Invalid JSON"),
        (b"", "Invalid JSON"),
        (json.dumps({"instances": ["hello"]}).encode(), "'inputs': Field required (a V2 body is"),
        (json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}).encode(), "'inputs.0.data'"),
    ],
    ids=["not-json", "empty", "v1-instances", "no-data"],
)
def test_undecodable_v2_bodies_are_400_naming_the_problem(predictor: Server, body: bytes, message: str) -> None:
    response = httpx.post(infer_url(predictor), content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error, error
    assert ": :" not in error and "''" not in error, error  # no empty field names


def test_grpc_gets_invalid_argument_where_rest_gets_400(predictor: Server) -> None:
    """One decision for both protocols: a request kembed cannot use is the client's error."""
    from grpc import StatusCode
    from grpc.aio import AioRpcError

    async def call() -> AioRpcError:
        client = InferenceGRPCClient(f"127.0.0.1:{predictor.grpc_port}")
        try:
            await client.infer(InferRequest(model_name=MODEL_NAME, infer_inputs=[]))
        except AioRpcError as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("no error")

    failure = asyncio.run(call())
    rest = httpx.post(infer_url(predictor), json={"inputs": []})
    assert failure.code() == StatusCode.INVALID_ARGUMENT and rest.status_code == 400
    assert "no inputs" in failure.details() and "no inputs" in rest.json()["error"]


def test_unknown_model_is_404(predictor: Server) -> None:
    response = httpx.post(infer_url(predictor, "nope"), json=text_payload(["hi"]))
    assert response.status_code == 404


def scrape(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics").text


def sample(metrics_text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_metrics_exported_and_move_after_traffic(predictor: Server) -> None:
    before = scrape(predictor)
    for name in (
        "kembed_requests_total",
        "kembed_request_duration_seconds_bucket",
        "kembed_batch_size_bucket",
        "kembed_batch_tokens_bucket",
        "kembed_queue_depth",
        "kembed_inflight",
        "kembed_model_load_seconds",
    ):
        assert f"\n{name}" in before or before.startswith(name), f"{name} missing from /metrics"
    embed(predictor, TEXTS)
    httpx.post(infer_url(predictor), json={"inputs": []})
    after = scrape(predictor)
    ok = dict(model=MODEL_NAME, status="200")
    bad = dict(model=MODEL_NAME, status="400")
    assert sample(after, "kembed_requests_total", **ok) >= sample(before, "kembed_requests_total", **ok) + 1
    assert sample(after, "kembed_requests_total", **bad) >= sample(before, "kembed_requests_total", **bad) + 1
    assert sample(after, "kembed_batch_size_sum") >= sample(before, "kembed_batch_size_sum") + len(TEXTS)
    assert sample(after, "kembed_batch_tokens_count") > sample(before, "kembed_batch_tokens_count")
    duration = "kembed_request_duration_seconds_count"
    assert sample(after, duration) > sample(before, duration)
    assert sample(after, "kembed_model_load_seconds", model=MODEL_NAME) > 0


def test_v1_protocol_is_400_pointing_to_v2(predictor: Server) -> None:
    response = httpx.post(f"{predictor.url}/v1/models/{MODEL_NAME}:predict", json={"instances": ["hello"]})
    assert response.status_code == 400, response.text
    assert "V2 protocol" in response.json()["error"]
