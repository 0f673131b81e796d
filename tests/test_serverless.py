"""The serverless contract: drain on SIGTERM, 413 before parsing, only 200/429 under overload."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from kembed.launch import Server, start_server
from tests.conftest import MODEL_NAME

INFER = f"/v2/models/{MODEL_NAME}/infer"
LONG_TEXT = "Knative sends SIGTERM when it scales a revision down, and the pod must not drop work. " * 6


def start_predictor(tmp_path: Path, *flags: str) -> Server:
    return start_server(
        "predictor",
        ["--model_name", MODEL_NAME, *flags],
        tmp_path / "predictor.log",
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )


def payload(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_sigterm_mid_load_answers_every_accepted_request_and_exits_0(tmp_path: Path) -> None:
    server = start_predictor(
        tmp_path, "--max_batch_size", "4", "--max_queue_seconds", "100000", "--grace_period_seconds", "90"
    )
    url = f"{server.url}/v2/models/{MODEL_NAME}/infer"

    async def run() -> list[int | str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            async def one(index: int) -> int | str:
                try:
                    response = await client.post(url, json=payload([f"{LONG_TEXT} {index}", LONG_TEXT]))
                    return response.status_code
                except httpx.HTTPError as exc:
                    return repr(exc)

            tasks = [asyncio.create_task(one(i)) for i in range(24)]
            # wait until the server has work queued, then ask it to stop
            async with httpx.AsyncClient(timeout=10) as probe:
                for _ in range(200):
                    metrics = (await probe.get(f"{server.url}/metrics")).text
                    if any(
                        line.startswith("kembed_queue_depth") and float(line.split()[-1]) > 0
                        for line in metrics.splitlines()
                    ):
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the queue never filled")
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    statuses = asyncio.run(run())
    assert statuses == [200] * 24, statuses
    assert server.process.wait(60) == 0
    assert "Application shutdown complete" in server.log()


def test_oversized_bodies_are_413_before_parsing(tmp_path: Path) -> None:
    server = start_predictor(tmp_path, "--max_body_bytes", "2048")
    url = f"{server.url}/v2/models/{MODEL_NAME}/infer"
    try:
        big = payload(["word " * 1000])
        declared = httpx.post(url, json=big)
        assert declared.status_code == 413, declared.text
        assert "2048 bytes" in declared.json()["error"]

        def chunks():  # no Content-Length: the limit applies while the body streams in
            body = httpx.Request("POST", url, json=big).content
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        streamed = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text
        assert httpx.post(url, json=payload(["small enough"])).status_code == 200
    finally:
        server.stop()


def test_overload_gives_only_200_or_429_and_memory_stays_bounded(tmp_path: Path) -> None:
    # 96 closed-loop clients against a queue of 16 items: several times what the model can take.
    server = start_predictor(tmp_path, "--queue_size", "16", "--max_batch_size", "8")
    url = f"{server.url}/v2/models/{MODEL_NAME}/infer"
    rss_before = rss_kib(server.process.pid)

    async def run() -> dict[int, int]:
        counts: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8

        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=128)) as client:
            async def client_loop(index: int) -> None:
                sent = 0
                while loop.time() < deadline and sent < 200:
                    response = await client.post(url, json=payload([f"{LONG_TEXT[:200]} {index} {sent}"]))
                    sent += 1
                    counts[response.status_code] = counts.get(response.status_code, 0) + 1
                    if response.status_code == 429:
                        assert int(response.headers["retry-after"]) >= 1
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(client_loop(i) for i in range(96)))
        return counts

    try:
        counts = asyncio.run(run())
        assert set(counts) <= {200, 429}, counts
        assert counts.get(200, 0) > 0 and counts.get(429, 0) > 0, counts
        growth_mib = (rss_kib(server.process.pid) - rss_before) / 1024
        assert growth_mib < 300, f"RSS grew by {growth_mib:.0f} MiB under overload"
        assert httpx.post(url, json=payload(["still serving"]), timeout=60).status_code == 200
    finally:
        server.stop()


def test_sigterm_with_more_queued_than_the_grace_allows_answers_only_200_or_503(tmp_path: Path) -> None:
    """What cannot finish within the grace period is answered 503 with Retry-After, never 500."""
    server = start_predictor(tmp_path, "--grace_period_seconds", "3", "--max_queue_seconds", "100000")
    url = f"{server.url}/v2/models/{MODEL_NAME}/infer"

    async def run() -> list[tuple[int, str | None] | str]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            async def one(index: int) -> tuple[int, str | None] | str:
                try:
                    response = await client.post(url, json=payload([f"{LONG_TEXT} {index} {i}" for i in range(32)]))
                    return response.status_code, response.headers.get("retry-after")
                except httpx.HTTPError as exc:
                    return repr(exc)

            tasks = [asyncio.create_task(one(i)) for i in range(32)]
            await asyncio.sleep(1.0)  # everything sent and queued: far more than 3 s of work
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    answers = asyncio.run(run())
    statuses = [answer[0] if isinstance(answer, tuple) else answer for answer in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, statuses
    assert all(answer[1] for answer in answers if isinstance(answer, tuple) and answer[0] == 503)
    assert server.process.wait(30) == 0


def test_transformer_sigterm_with_requests_waiting_on_the_predictor_answers_only_200_or_503(tmp_path: Path) -> None:
    """The transformer's requests still waiting on the predictor when its grace runs out are answered
    503 with Retry-After (V2 and OpenAI routes alike), not cancelled into a 500."""
    predictor = start_predictor(tmp_path, "--max_queue_seconds", "100000", "--max_wait_seconds", "600")
    transformer = start_server(
        "transformer",
        ["--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{predictor.http_port}",
         "--grace_period_seconds", "3"],
        tmp_path / "transformer.log",
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )

    async def run() -> list[tuple[str, int, str | None] | str]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            async def one(index: int) -> tuple[str, int, str | None] | str:
                texts = [f"{LONG_TEXT} {index} {i}" for i in range(32)]
                route = "v2" if index % 2 else "openai"
                try:
                    if route == "v2":
                        response = await client.post(f"{transformer.url}{INFER}", json=payload(texts))
                    else:
                        response = await client.post(f"{transformer.url}/v1/embeddings",
                                                     json={"model": MODEL_NAME, "input": texts})
                    return route, response.status_code, response.headers.get("retry-after")
                except httpx.HTTPError as exc:
                    return repr(exc)

            tasks = [asyncio.create_task(one(i)) for i in range(32)]
            await asyncio.sleep(1.0)  # everything sent and waiting on the predictor: far more than 3 s of work
            transformer.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    try:
        answers = asyncio.run(run())
        assert transformer.process.wait(30) == 0
    finally:
        transformer.stop()
        predictor.stop()
    statuses = [answer[1] if isinstance(answer, tuple) else answer for answer in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert {route for route, status, _ in answers if status == 503} == {"v2", "openai"}, answers
    assert all(retry_after for _, status, retry_after in answers if status == 503), answers
