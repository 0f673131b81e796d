"""Thousands of malformed V2 payloads against the running predictor: never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kembed.launch import Server
from tests.conftest import MODEL_NAME

FUZZ_SETTINGS = settings(
    max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["text", "input_ids", "attention_mask", "embedding", ""]) | st.text(max_size=6),
        "shape": st.lists(st.integers(-3, 2**40) | st.sampled_from([0, 1, 2, 3]), max_size=3) | json_values,
        "datatype": st.sampled_from(["BYTES", "INT64", "FP32", "INT32", "BOOL", "FP16", "UINT8", "bytes"]),
        "data": st.lists(st.text(max_size=12) | st.integers(-5, 40000) | st.floats(allow_nan=False), max_size=6)
        | st.lists(st.lists(st.integers(-5, 40000), max_size=4), max_size=3)
        | json_values,
    },
    optional={"parameters": st.dictionaries(st.text(max_size=16), json_values, max_size=3)},
)

v2_body = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_values},
    optional={
        "id": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["normalize", "dimensions", "binary_data_output"]) | st.text(max_size=8),
            json_values,
            max_size=3,
        ),
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=10)}), max_size=2) | json_values,
    },
)


@pytest.fixture(scope="module")
def client(predictor: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=predictor.url, timeout=60) as session:
        yield session


INFER = f"/v2/models/{MODEL_NAME}/infer"


@FUZZ_SETTINGS
@given(body=v2_body)
def test_structured_v2_payloads_never_5xx(client: httpx.Client, body: dict) -> None:
    response = client.post(INFER, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    header=st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=2)}),
    json_length_delta=st.integers(-20, 20),
    raw=st.binary(max_size=64),
    binary_size=st.integers(-4, 80),
)
def test_binary_extension_payloads_never_5xx(
    client: httpx.Client, header: dict, json_length_delta: int, raw: bytes, binary_size: int
) -> None:
    for tensor_spec in header["inputs"]:
        tensor_spec.pop("data", None)
        tensor_spec["parameters"] = {"binary_data_size": binary_size}
    head = json.dumps(header).encode()
    response = client.post(
        INFER,
        content=head + raw,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(max(0, len(head) + json_length_delta)),
        },
    )
    assert response.status_code < 500, (header, raw, response.text)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_arbitrary_bytes_never_5xx(client: httpx.Client, raw: bytes, content_type: str) -> None:
    response = client.post(INFER, content=raw, headers={"content-type": content_type})
    assert response.status_code < 500, (raw, response.text)
