"""Shared fixtures: one real predictor (bundled model) for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kembed.launch import Server, start_server

MODEL_NAME = "minilm"


@pytest.fixture(scope="session")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The predictor with the bundled all-MiniLM-L6-v2, served as model `minilm`."""
    log = tmp_path_factory.mktemp("predictor") / "predictor.log"
    server = start_server(
        "predictor",
        ["--model_name", MODEL_NAME, "--queue_size", "4096"],
        log,
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )
    yield server
    server.stop()
