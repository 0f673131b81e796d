"""Hostile input against the real predictor and transformer: no stalls behind long texts, closed
admin routes, health that tells the truth."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from kembed.launch import Server, start_server
from tests.conftest import MODEL_NAME

INFER = f"/v2/models/{MODEL_NAME}/infer"
READY = f"/v2/models/{MODEL_NAME}/ready"
# Under the 8 MiB body limit; tokenizing all of it takes seconds of CPU.
HUGE_TEXT = "tokenizers split every word of a long text before truncating. " * 116_000


def v2_body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


@pytest.mark.parametrize("which", ["predictor", "transformer"])
def test_a_small_request_does_not_wait_behind_a_huge_text(which: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(which)
    assert 7_000_000 < len(HUGE_TEXT.encode()) < 8 * 1024 * 1024

    def huge() -> int:
        return httpx.post(server.url + INFER, json=v2_body([HUGE_TEXT]), timeout=120).status_code

    with httpx.Client(base_url=server.url, timeout=60) as client, ThreadPoolExecutor(2) as pool:
        client.post(INFER, json=v2_body(["warm"]))
        big = [pool.submit(huge) for _ in range(2)]
        time.sleep(0.3)  # the huge bodies are on their way
        latencies = []
        for index in range(5):
            started = time.perf_counter()
            response = client.post(INFER, json=v2_body([f"a small request {index}"]))
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
        assert [future.result() for future in big] == [200, 200]
    assert max(latencies) < 1.0, latencies


def grpc_stub(server: Server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize("which", ["predictor", "transformer"])
def test_model_repository_routes_are_closed_by_default(which: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(which)
    for action in ("load", "unload"):
        response = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/{action}", timeout=10)
        assert response.status_code == 404 and "--enable_model_repository" in response.text, response.text
    channel, stub = grpc_stub(server)
    with channel, pytest.raises(grpc.RpcError) as error:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL_NAME), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert httpx.get(server.url + READY, timeout=10).status_code == 200
    assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200


@pytest.mark.parametrize("which", ["predictor", "transformer"])
def test_a_grpc_body_that_is_no_protobuf_is_invalid_argument_logged_in_one_line(which: str, request) -> None:
    """The served processes, with their own logging: grpc alone would answer UNKNOWN with a traceback."""
    server: Server = request.getfixturevalue(which)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as error:
            raw(b"\xff\xff\xff\xff\x0f", timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in error.value.details()
    time.sleep(0.2)  # the log line is written as the answer leaves
    log = server.log()
    assert log.count("not a valid inference.ModelInferRequest") == 1, log[-2000:]
    assert "Exception deserializing" not in log and "DecodeError" not in log


def test_after_an_unload_liveness_and_readiness_fail(tmp_path: Path) -> None:
    """With the extension turned on, an unload leaves a pod that Kubernetes restarts."""
    server = start_server(
        "predictor", ["--model_name", MODEL_NAME, "--enable_model_repository", "true"], tmp_path / "p.log",
        ready_path=READY,
    )
    try:
        response = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/unload", timeout=10)
        assert response.status_code == 200, response.text
        assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 503
        assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 503
        channel, stub = grpc_stub(server)
        with channel:
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            assert not stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    finally:
        server.stop()


def metric_sum(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_work_of_a_client_that_disconnected_gets_no_forward_pass(predictor: Server) -> None:
    """A request whose client hangs up while it waits in the queue leaves it without a pass."""
    items = "kembed_batch_size_sum"
    before = metric_sum(predictor, items)
    busy_texts = [f"{HUGE_TEXT[:1500]} {i}" for i in range(16)]
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, predictor.url + INFER, json=v2_body(busy_texts), timeout=120)
        deadline = time.monotonic() + 30
        while metric_sum(predictor, "kembed_inflight") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the busy request is in its forward pass
        body = orjson.dumps(v2_body([f"gone {i}" for i in range(50)]))
        with socket.create_connection(("127.0.0.1", predictor.http_port)) as sock:
            sock.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            time.sleep(0.2)  # read and queued behind the busy request; then the client hangs up
        assert busy.result().status_code == 200, busy.result().text
    deadline = time.monotonic() + 30
    while metric_sum(predictor, "kembed_queue_depth") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert metric_sum(predictor, items) - before == len(busy_texts)


def token_body(ids: list, mask: list | None = None) -> dict:
    return {"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, len(ids)], "data": ids},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, len(ids)], "data": mask or [1] * len(ids)},
    ]}


TEXT_BODY = v2_body(["hello"])
# (method, path, request keywords, status, words the answer must hold); on both servers unless marked.
MISTAKES = [
    ("GET", f"/v2/models/{MODEL_NAME}?model_version=2", {}, 404, "versions"),
    ("GET", f"/v2/models/{MODEL_NAME}/versions/2", {}, 404, "versions"),
    ("GET", f"/v2/models/{MODEL_NAME}/versions/2/ready", {}, 404, "versions"),
    ("POST", f"/v2/models/{MODEL_NAME}/versions/2/infer", {"json": TEXT_BODY}, 404, "versions"),
    ("POST", f"/v1/models/{MODEL_NAME}:predict", {"json": {"instances": ["a"]}}, 400, "V2"),
    ("POST", f"/v1/models/{MODEL_NAME}:explain", {"json": {"instances": ["a"]}}, 400, "V2"),
    ("POST", f"/v1/models/{MODEL_NAME}:predict", {"files": {"f": ("a", b"x")}}, 400, "V2"),
    ("POST", f"/v1/models/{MODEL_NAME}:explain", {"files": {"f": ("a", b"x")}}, 400, "V2"),
    ("POST", INFER, {"files": {"f": ("a", b"x")}}, 415, "multipart/form-data"),
    ("POST", INFER, {"content": orjson.dumps(TEXT_BODY), "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("POST", INFER, {"json": v2_body(["\u200b\u200c\u2060\ufeff"])}, 400, "no tokens"),
    ("POST", INFER, {"content": orjson.dumps(token_body([101, 2**63 - 1])).replace(b"9223372036854775807",
                                                                                   b"9223372036854775808"),
                     "headers": {"content-type": "application/json"}}, 400, "INT64", "predictor"),
    ("POST", INFER, {"json": token_body([101.0, 102.0])}, 400, "INT64", "predictor"),
    ("POST", INFER, {"json": token_body([101, True])}, 400, "INT64", "predictor"),
    ("POST", INFER, {"json": token_body([101, 102], [1.0, 1])}, 400, "INT64", "predictor"),
]


@pytest.mark.parametrize(
    ("which", "mistake"),
    [(which, m) for m in MISTAKES for which in ("predictor", "transformer") if which in m[5:] or len(m) == 5],
    ids=lambda v: v if isinstance(v, str) else f"{v[0]} {v[1][:40]} {v[3]}",
)
def test_a_clients_mistake_is_a_4xx_that_says_what(which: str, mistake: tuple, request) -> None:
    method, path, keywords, status, words, *_ = mistake
    server: Server = request.getfixturevalue(which)
    response = httpx.request(method, server.url + path, timeout=30, **keywords)
    assert response.status_code == status, response.text
    assert words in response.text


def test_half_sent_requests_are_answered_408_and_closed(predictor: Server, tmp_path: Path) -> None:
    server = start_server(
        "transformer",
        ["--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{predictor.http_port}",
         "--header_timeout_seconds", "1", "--body_timeout_seconds", "1"],
        tmp_path / "t.log", ready_path=READY,
    )

    def answer(parts: list[bytes]) -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
            sock.settimeout(15)
            started = time.monotonic()
            for part in parts:
                sock.sendall(part)
            received = b""
            while chunk := sock.recv(4096):  # until the server closes the connection
                received += chunk
            return received, time.monotonic() - started

    try:
        _, seconds = answer([])
        assert seconds < 5  # a connection that never sends is closed too
        head, seconds = answer([f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Ty".encode()])
        assert head.startswith(b"HTTP/1.1 408") and b"headers" in head and seconds < 5, head
        body = orjson.dumps(v2_body(["never finished"]))
        partial, seconds = answer([
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10]
        ])
        assert partial.startswith(b"HTTP/1.1 408") and b"body" in partial and seconds < 5, partial
        # keep-alive: a whole request is answered, then the next half-sent one times out
        whole = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        both, _ = answer([f"{whole}\r\n\r\n".encode() + body + b"POST /v2 HTTP/1.1\r\nHo"])
        assert both.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in both, both[:300]
        assert httpx.post(server.url + INFER, json=v2_body(["still serving"]), timeout=30).status_code == 200
    finally:
        server.stop()
