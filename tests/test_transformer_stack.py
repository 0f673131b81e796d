"""The local stack (`make serve`): both processes come up, answer V2 and OpenAI, and stop on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kembed.launch import ROOT, free_port


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_serves_v2_and_openai_and_stops_both_on_sigint(tmp_path):
    ports = {name: free_port() for name in ("http", "grpc", "predictor_http", "predictor_grpc")}
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "KEMBED_STACK_MODEL_NAME": "stackmodel",  # the env route; ports go through the flags
    }
    log = (tmp_path / "stack.log").open("wb")
    stack = subprocess.Popen(
        [sys.executable, "-m", "scripts.serve_stack", *(f"--{name}_port={port}" for name, port in ports.items())],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 240
        while "kembed is up" not in (tmp_path / "stack.log").read_text(errors="replace"):
            assert stack.poll() is None, (tmp_path / "stack.log").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "stack not ready in time"
            time.sleep(0.5)
        output = (tmp_path / "stack.log").read_text(errors="replace")
        assert f"http://127.0.0.1:{ports['http']}/v1/embeddings" in output  # the curl examples
        pids = children(stack.pid)
        assert len(pids) == 2  # predictor and transformer

        v2 = httpx.post(f"{url}/v2/models/stackmodel/infer", timeout=60, json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello stack"]}]})
        assert v2.status_code == 200 and v2.json()["outputs"][0]["shape"] == [1, 384]
        oai = httpx.post(f"{url}/v1/embeddings", json={"model": "stackmodel", "input": "hello stack"}, timeout=60)
        assert oai.status_code == 200 and len(oai.json()["data"][0]["embedding"]) == 384
        assert oai.json()["data"][0]["embedding"] == pytest.approx(v2.json()["outputs"][0]["data"], abs=1e-6)

        stack.send_signal(signal.SIGINT)
        assert stack.wait(60) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
            stack.wait()
    assert not any(alive(pid) for pid in pids)
    for port in (ports["http"], ports["predictor_http"]):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
