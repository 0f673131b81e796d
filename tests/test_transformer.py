"""End-to-end: the real transformer in front of the real predictor, both on 127.0.0.1."""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kembed.cli import bundled_model_dir
from kembed.launch import Server, free_port, start_server
from kembed.model_spec import read_model_spec
from kembed.tokenization import TextTokenizer
from tests.conftest import MODEL_NAME

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serverless embeddings scale to zero when idle.",
    "Knative routes traffic to the latest ready revision.",
    "A tokenizer turns text into integer ids.",
]
READY = f"/v2/models/{MODEL_NAME}/ready"
INFER = f"/v2/models/{MODEL_NAME}/infer"


def fresh(texts: list[str]) -> list[str]:
    """Texts no earlier test has sent, so cache counts start from zero for them."""
    tag = uuid.uuid4().hex[:8]
    return [f"{text} ({tag})" for text in texts]


def v2_body(texts: list[str], parameters: dict | None = None) -> dict:
    body: dict = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    if parameters:
        body["parameters"] = parameters
    return body


def embed(url: str, texts: list[str], parameters: dict | None = None) -> np.ndarray:
    response = httpx.post(url + INFER, json=v2_body(texts, parameters), timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "embedding" and output["datatype"] == "FP32"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def metric(url: str, name: str) -> float:
    """A sample of the server's /metrics (sum over label sets), 0 when absent."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def hung_port() -> Iterator[int]:
    """A socket that listens but never answers: the kernel completes the TCP handshake and the
    request waits forever, which is what a stuck predictor looks like to the transformer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def down_port() -> int:
    """A port with nothing listening: a predictor that is down."""
    return free_port()


@pytest.fixture(scope="module")
def transformers(predictor: Server, hung_port: int, down_port: int, tmp_path_factory) -> Iterator[dict[str, Server]]:
    """All transformer variants, started in parallel (startup is mostly imports)."""
    rest_host = f"127.0.0.1:{predictor.http_port}"
    variants: dict[str, tuple[list[str], dict[str, str]]] = {
        # REST V2 with binary tensors (the default); more items per request than the predictor takes.
        "rest": (["--predictor_host", rest_host, "--max_items_per_request", "1000"], {}),
        # gRPC V2 hop, embedding cache on.
        "grpc": (
            ["--predictor_host", f"127.0.0.1:{predictor.grpc_port}", "--predictor_protocol", "grpc-v2"],
            {"KEMBED_EMBEDDING_CACHE_SIZE": "1000"},
        ),
        # REST V2 with JSON number arrays, tokenizer cache off.
        "json": (["--predictor_host", rest_host], {"KEMBED_PREDICTOR_BINARY": "false",
                                                    "KEMBED_TOKENIZER_CACHE_SIZE": "0"}),
        "down": (["--predictor_host", f"127.0.0.1:{down_port}"], {}),
        "hung": (["--predictor_host", f"127.0.0.1:{hung_port}"], {"KEMBED_PREDICTOR_TIMEOUT_SECONDS": "1"}),
    }
    root = tmp_path_factory.mktemp("transformers")

    def start(name: str) -> Server:
        args, env = variants[name]
        return start_server(
            "transformer", ["--model_name", MODEL_NAME, *args], root / f"{name}.log", env=env, ready_path=READY
        )

    with ThreadPoolExecutor(len(variants)) as pool:
        futures = {name: pool.submit(start, name) for name in variants}
        servers = {}
        errors = []
        for name, future in futures.items():
            try:
                servers[name] = future.result()
            except Exception as exc:  # stop the ones that did start before failing the module
                errors.append(exc)
    if errors:
        stop_all(servers.values())
        raise errors[0]
    yield servers
    stop_all(servers.values())


def stop_all(servers: Iterable[Server]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(Server.stop, servers))


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    spec = read_model_spec(bundled_model_dir())
    return TextTokenizer(bundled_model_dir(), spec.max_seq_length, truncate=True)


@pytest.mark.parametrize("variant", ["rest", "grpc", "json"])
@pytest.mark.parametrize("parameters", [None, {"normalize": False}, {"dimensions": 64}])
def test_same_embeddings_as_the_predictor_alone(predictor, transformers, variant, parameters):
    direct = embed(predictor.url, TEXTS, parameters)
    through = embed(transformers[variant].url, TEXTS, parameters)
    assert through.shape == direct.shape == (len(TEXTS), 64 if parameters == {"dimensions": 64} else 384)
    assert (cosine(direct, through) >= 0.999).all()
    norms = np.linalg.norm(through, axis=1)
    if parameters == {"normalize": False}:
        assert not np.allclose(norms, 1.0, atol=1e-3)  # normalize=false reached the predictor
    else:
        assert np.allclose(norms, 1.0, atol=1e-4)


def test_repeated_texts_come_from_the_token_cache(transformers):
    url = transformers["rest"].url
    texts = fresh(TEXTS)
    before = {name: metric(url, name) for name in (
        "kembed_tokenizer_cache_hits_total", "kembed_tokenizer_cache_misses_total", "kembed_tokenize_seconds_count",
    )}
    first = embed(url, texts)
    after_first = {name: metric(url, name) for name in before}
    assert after_first["kembed_tokenizer_cache_misses_total"] - before["kembed_tokenizer_cache_misses_total"] == 4
    assert after_first["kembed_tokenize_seconds_count"] - before["kembed_tokenize_seconds_count"] == 1
    second = embed(url, [texts[2], texts[0], texts[2]])
    after_second = {name: metric(url, name) for name in before}
    # Two distinct texts (a text repeated within a request is looked up and embedded once).
    assert after_second["kembed_tokenizer_cache_hits_total"] - after_first["kembed_tokenizer_cache_hits_total"] == 2
    assert after_second["kembed_tokenizer_cache_misses_total"] == after_first["kembed_tokenizer_cache_misses_total"]
    assert after_second["kembed_tokenize_seconds_count"] == after_first["kembed_tokenize_seconds_count"]
    # Same ids, other batch-mates: the same vectors up to float rounding (a GEMM over another token
    # count may sum in another order), not bit for bit.
    np.testing.assert_allclose(second, first[[2, 0, 2]], rtol=1e-5, atol=1e-6)
    assert metric(url, "kembed_tokenizer_cache_entries") >= 4
    assert metric(url, "kembed_tokenizer_cache_bytes") > 0


def test_tokenizer_cache_off_still_embeds_and_counts_misses(transformers):
    url = transformers["json"].url
    texts = fresh(TEXTS[:2])
    embed(url, texts)
    embed(url, texts)
    assert metric(url, "kembed_tokenizer_cache_hits_total") == 0
    assert metric(url, "kembed_tokenizer_cache_entries") == 0


def test_embedding_cache_skips_the_predictor(transformers):
    url = transformers["grpc"].url
    texts = fresh(TEXTS)
    calls = metric(url, "kembed_predictor_request_seconds_count")
    first = embed(url, texts)
    assert metric(url, "kembed_predictor_request_seconds_count") == calls + 1
    hits = metric(url, "kembed_embedding_cache_hits_total")
    second = embed(url, texts)
    assert metric(url, "kembed_predictor_request_seconds_count") == calls + 1  # no predictor call
    assert metric(url, "kembed_embedding_cache_hits_total") == hits + 4
    assert np.array_equal(first, second)
    # Other parameters are other entries: this one goes to the predictor again.
    cut = embed(url, texts, {"dimensions": 32})
    assert metric(url, "kembed_predictor_request_seconds_count") == calls + 2
    assert cut.shape == (4, 32)
    # A mix of cached and new texts: one call for the new one only.
    mixed = embed(url, [texts[1], "a brand new sentence " + uuid.uuid4().hex])
    assert metric(url, "kembed_predictor_request_seconds_count") == calls + 3
    assert np.array_equal(mixed[0], first[1])


def test_openai_client_gets_the_same_vectors_and_real_usage(predictor, transformers, tokenizer):
    client = openai.OpenAI(base_url=transformers["rest"].url + "/v1", api_key="unused", max_retries=0)
    direct = embed(predictor.url, TEXTS)
    result = client.embeddings.create(model=MODEL_NAME, input=TEXTS)  # the client asks for base64
    vectors = np.asarray([item.embedding for item in result.data], dtype=np.float32)
    assert [item.index for item in result.data] == [0, 1, 2, 3]
    assert result.object == "list" and result.model == MODEL_NAME
    assert (cosine(direct, vectors) >= 0.999).all()
    real_tokens = sum(len(row) for row in tokenizer.encode(TEXTS))
    assert result.usage.prompt_tokens == result.usage.total_tokens == real_tokens
    floats = client.embeddings.create(model=MODEL_NAME, input=TEXTS[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    cut = client.embeddings.create(model=MODEL_NAME, input=TEXTS[:2], dimensions=128)
    assert len(cut.data) == 2 and all(len(item.embedding) == 128 for item in cut.data)


def test_openai_base64_is_little_endian_float32_of_the_same_floats(transformers):
    url = transformers["rest"].url + "/v1/embeddings"
    as_float = httpx.post(url, json={"model": MODEL_NAME, "input": TEXTS[:2], "encoding_format": "float"}).json()
    as_b64 = httpx.post(url, json={"model": MODEL_NAME, "input": TEXTS[:2], "encoding_format": "base64"}).json()
    assert as_float.keys() == {"object", "data", "model", "usage"}
    assert as_float["data"][0].keys() == {"object", "index", "embedding"}
    for plain, encoded in zip(as_float["data"], as_b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.asarray(plain["embedding"], dtype=np.float32))
    assert as_float["usage"] == as_b64["usage"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL_NAME}, 400, "input"),
        ({"model": MODEL_NAME, "input": []}, 400, "input"),
        ({"model": MODEL_NAME, "input": ["ok", "  "]}, 400, "input"),
        ({"model": MODEL_NAME, "input": [[101, 2023, 102]]}, 400, "input"),
        ({"model": MODEL_NAME, "input": [101, 2023]}, 400, "input"),
        ({"model": MODEL_NAME, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": MODEL_NAME, "input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"model": MODEL_NAME, "input": "x", "dimensions": 4096}, 400, "dimensions"),
        ({"model": MODEL_NAME, "input": "x", "dimensions": "64"}, 400, "dimensions"),
        ({"input": "x"}, 400, "model"),
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
        ([1, 2], 400, None),
    ],
)
def test_bad_openai_payloads_get_openai_errors(transformers, body, status, param):
    response = httpx.post(transformers["rest"].url + "/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if param:
        assert param in error["message"] or status == 404


def test_invalid_json_is_a_400(transformers):
    url = transformers["rest"].url
    response = httpx.post(url + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, "txt"),
        ({"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}]}, "text"),
        (v2_body(["fine", ""]), "text"),
        (v2_body(["fine"], {"dimensions": 1000}), "dimensions"),
        (v2_body(["fine"], {"normalize": "perhaps"}), "normalize"),
        ({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]},
                     {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 1]}]}, "text"),
    ],
)
def test_bad_v2_payloads_are_400_naming_the_field(transformers, body, field):
    url = transformers["rest"].url
    before = metric(url, "kembed_requests_total")
    response = httpx.post(url + INFER, json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert metric(url, "kembed_requests_total") == before + 1  # counted by the DataPlane (protocol="rest")


def test_predictor_400_is_passed_through(transformers):
    texts = [f"sentence number {index}" for index in range(300)]  # the transformer takes 1000, the predictor 256
    response = httpx.post(transformers["rest"].url + INFER, json=v2_body(texts), timeout=60)
    assert response.status_code == 400
    assert "at most 256 are accepted per request" in response.json()["error"]
    openai_response = httpx.post(
        transformers["rest"].url + "/v1/embeddings", json={"model": MODEL_NAME, "input": texts}, timeout=60
    )
    assert openai_response.status_code == 400
    assert "at most 256" in openai_response.json()["error"]["message"]


def test_predictor_down_is_503_naming_the_host(transformers, down_port):
    server = transformers["down"]
    host = f"127.0.0.1:{down_port}"
    response = httpx.post(server.url + INFER, json=v2_body(TEXTS[:1]), timeout=30)
    assert response.status_code == 503
    assert host in response.json()["error"]
    assert response.headers.get("retry-after")
    openai_response = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL_NAME, "input": "x"}, timeout=30)
    assert openai_response.status_code == 503
    assert host in openai_response.json()["error"]["message"]
    assert openai_response.json()["error"]["type"] == "server_error"


def test_predictor_timeout_is_504(transformers):
    server = transformers["hung"]
    response = httpx.post(server.url + INFER, json=v2_body(TEXTS[:1]), timeout=30)
    assert response.status_code == 504
    assert "did not answer in time" in response.json()["error"]


def test_grpc_clients_of_the_transformer_get_embeddings(predictor, transformers):
    """The transformer's own gRPC port (texts arrive as bytes there), through kserve's client."""
    import asyncio

    from kserve import InferenceGRPCClient

    from kembed.contract import embeddings_from_response, text_request

    async def call() -> np.ndarray:
        async with InferenceGRPCClient(f"127.0.0.1:{transformers['rest'].grpc_port}", retries=0) as client:
            return embeddings_from_response(await client.infer(text_request(MODEL_NAME, TEXTS)))

    through = asyncio.run(call())
    assert (cosine(embed(predictor.url, TEXTS), through) >= 0.999).all()
