"""Shared fixtures: one real predictor (bundled model) and one real transformer in front of it, for the
whole session (a test that needs other settings starts its own)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kembed.launch import Server, start_server

MODEL_NAME = "minilm"

# The suite compares served vectors with fp32 references at fp32 tolerances, so every server it starts
# computes in fp32 unless a test asks otherwise; `--dtype auto` (bf16 where the CPU has it) and each
# backend are tested with their own tolerances in test_runtimes.py.
os.environ.setdefault("KEMBED_DTYPE", "float32")


@pytest.fixture(scope="session")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The predictor with the bundled all-MiniLM-L6-v2, served as model `minilm`."""
    log = tmp_path_factory.mktemp("predictor") / "predictor.log"
    server = start_server(
        "predictor",
        # Bursts from the tests must not meet admission (tested on its own servers) on a loaded machine.
        ["--model_name", MODEL_NAME, "--queue_size", "4096", "--max_queue_seconds", "600",
         "--max_wait_seconds", "600"],
        log,
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def transformer(predictor: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A transformer with its default settings in front of `predictor`."""
    server = start_server(
        "transformer",
        ["--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{predictor.http_port}"],
        tmp_path_factory.mktemp("transformer") / "transformer.log",
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )
    yield server
    server.stop()
