"""Thousands of malformed OpenAI and V2 payloads against a running transformer: never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kembed.launch import Server
from tests.conftest import MODEL_NAME
from tests.test_fuzz_v2 import json_values, v2_body

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

texts = st.text(max_size=30)
openai_body = st.fixed_dictionaries(
    {},
    optional={
        "input": texts
        | st.lists(texts, max_size=4)
        | st.lists(st.integers(-5, 50_000), max_size=4)
        | st.lists(st.lists(st.integers(-5, 50_000), max_size=3), max_size=2)
        | json_values,
        "model": st.sampled_from([MODEL_NAME, "", "other"]) | json_values,
        "encoding_format": st.sampled_from(["float", "base64", "FLOAT", ""]) | json_values,
        "dimensions": st.integers(-3, 1000) | json_values,
        "user": json_values,
    },
)


@pytest.fixture(scope="module")
def client(transformer: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=transformer.url, timeout=60) as session:
        yield session


@settings(FUZZ, max_examples=1000)
@given(body=openai_body)
def test_openai_payloads_never_5xx(client: httpx.Client, body: dict) -> None:
    response = client.post(
        "/v1/embeddings", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert "message" in response.json()["error"], response.text


@settings(FUZZ, max_examples=500)
@given(body=v2_body)
def test_v2_payloads_to_the_transformer_never_5xx(client: httpx.Client, body: dict) -> None:
    response = client.post(
        f"/v2/models/{MODEL_NAME}/infer",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code < 500, (body, response.text)


@settings(FUZZ, max_examples=300)
@given(raw=st.binary(max_size=200), path=st.sampled_from(["/v1/embeddings", f"/v2/models/{MODEL_NAME}/infer"]))
def test_arbitrary_bytes_never_5xx(client: httpx.Client, raw: bytes, path: str) -> None:
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, (raw, response.text)
