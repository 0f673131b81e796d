"""Hostile input against the real predictor and transformer: no stalls behind long texts, closed
admin routes, health that tells the truth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from kembed.launch import Server, start_server
from tests.conftest import MODEL_NAME

INFER = f"/v2/models/{MODEL_NAME}/infer"
READY = f"/v2/models/{MODEL_NAME}/ready"
# Under the 8 MiB body limit; tokenizing all of it takes seconds of CPU.
HUGE_TEXT = "tokenizers split every word of a long text before truncating. " * 116_000


def v2_body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


@pytest.fixture(scope="module")
def transformer(predictor: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("transformer") / "transformer.log"
    server = start_server(
        "transformer",
        ["--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{predictor.http_port}"],
        log,
        ready_path=READY,
    )
    yield server
    server.stop()


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
