"""Models saved by sentence-transformers, served by real servers, against `SentenceTransformer.encode`.

Two representative models, each behind a real predictor and a real transformer in front of it:
- BERT, CLS pooling without the prompt, Dense 32->16 (tanh), Normalize; prompts with a default;
- a Qwen3 decoder (transformers backend), last-token pooling, Normalize, an instruction prompt.
Every pooling mode and module mix is covered in-process in test_pooling.py; here the point is the
whole path: prompts by name and raw on V2 text and token inputs, OpenAI, the metadata, the refusals.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient

from kembed import contract
from kembed.launch import Server, free_port, start_server
from kembed.model_spec import read_model_spec
from tests.st_models import TEXTS, backbone, min_cosine, module_types, reference, st_model

PROMPTS = {"query": "query: ", "doc": "passage: "}
INSTRUCTION = {"query": "Instruct: find the passage that answers\nQuery: "}


def serve_pair(model_dir: Path, name: str, log_dir: Path) -> tuple[Server, Server]:
    """float32: exactness is checked here; reduced precision has its own gate (test_runtimes.py).
    Both start at once: the transformer does not call the predictor until a request comes."""
    predictor_port = free_port()
    with ThreadPoolExecutor(2) as pool:
        predictor = pool.submit(
            start_server, "predictor", ["--model_name", name, "--model_dir", str(model_dir), "--dtype", "float32"],
            log_dir / f"{name}-predictor.log", ready_path=f"/v2/models/{name}/ready", http_port=predictor_port,
        )
        transformer = pool.submit(
            start_server, "transformer",
            ["--model_name", name, "--model_dir", str(model_dir), "--predictor_host", f"127.0.0.1:{predictor_port}"],
            log_dir / f"{name}-transformer.log", ready_path=f"/v2/models/{name}/ready",
        )
    failed = [future for future in (predictor, transformer) if future.exception()]
    if failed:  # stop the one that did start, then raise the other's error
        for future in {predictor, transformer} - set(failed):
            future.result().stop()
        failed[0].result()
    return predictor.result(), transformer.result()


@pytest.fixture(scope="module")
def bert_dense(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Server, Server]]:
    root = tmp_path_factory.mktemp("bert-dense")
    path = st_model(root / "model", backbone(root / "backbone", "bert"), "cls", include_prompt=False,
                    dense=[(16, "Tanh")], prompts=PROMPTS, default_prompt_name="query", max_seq_length=48)
    assert module_types(path) == ["Transformer", "Pooling", "Dense", "Normalize"]
    predictor, transformer = serve_pair(path, "bertdense", root)
    yield path, predictor, transformer
    transformer.stop()
    predictor.stop()


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Server, Server]]:
    root = tmp_path_factory.mktemp("qwen3")
    path = st_model(root / "model", backbone(root / "backbone", "qwen3"), "lasttoken", prompts=INSTRUCTION)
    predictor, transformer = serve_pair(path, "qwen", root)
    yield path, predictor, transformer
    transformer.stop()
    predictor.stop()


def v2(server: Server, name: str, texts: list[str], **parameters: object) -> httpx.Response:
    body: dict = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    if parameters:
        body["parameters"] = parameters
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=60)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


# sentence-transformers' encode() options -> the same request to kembed
PROMPT_CASES = {
    "default prompt": ({}, {}),
    "named prompt": ({"prompt_name": "doc"}, {"prompt_name": "doc"}),
    "raw prompt": ({"prompt": "Represent this: "}, {"prompt": "Represent this: "}),
    "no prompt": ({"prompt": ""}, {"prompt": ""}),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_bert_dense_with_prompts_matches_sentence_transformers(bert_dense, case: str) -> None:
    path, predictor, transformer = bert_dense
    encode_options, parameters = PROMPT_CASES[case]
    expected = reference(path, TEXTS, **encode_options)
    assert expected.shape == (len(TEXTS), 16)
    for server in (predictor, transformer):
        got = vectors(v2(server, "bertdense", TEXTS, **parameters))
        assert min_cosine(got, expected) >= 0.9999, server.url
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_prompt_name_over_grpc(bert_dense) -> None:
    path, predictor, _ = bert_dense

    async def call() -> np.ndarray:
        client = InferenceGRPCClient(f"127.0.0.1:{predictor.grpc_port}")
        try:
            request = contract.text_request("bertdense", TEXTS, contract.EmbedOptions(prompt_name="doc"))
            return contract.embeddings_from_response(await client.infer(request))
        finally:
            await client.close()

    assert min_cosine(asyncio.run(call()), reference(path, TEXTS, prompt_name="doc")) >= 0.9999


def test_prompts_change_the_vectors(bert_dense) -> None:
    """The prompt cases above differ from each other: a server ignoring prompts would fail them."""
    _, predictor, _ = bert_dense
    default = vectors(v2(predictor, "bertdense", TEXTS))
    for parameters in ({"prompt_name": "doc"}, {"prompt": ""}):
        assert min_cosine(default, vectors(v2(predictor, "bertdense", TEXTS, **parameters))) < 0.999


def test_openai_prompt_name_and_token_cache_keyed_by_prompt(bert_dense) -> None:
    path, _, transformer = bert_dense
    url = f"{transformer.url}/v1/embeddings"
    for prompt_name in ("doc", "query", "doc"):  # the same texts again under another prompt: no stale ids
        body = httpx.post(url, json={"model": "bertdense", "input": TEXTS, "prompt_name": prompt_name}, timeout=60)
        assert body.status_code == 200, body.text
        got = np.array([item["embedding"] for item in body.json()["data"]], dtype=np.float32)
        assert min_cosine(got, reference(path, TEXTS, prompt_name=prompt_name)) >= 0.9999


def test_unknown_prompt_name_is_a_400_listing_the_known_ones(bert_dense) -> None:
    _, predictor, transformer = bert_dense
    for server in (predictor, transformer):
        response = v2(server, "bertdense", TEXTS, prompt_name="nope")
        assert response.status_code == 400
        assert "'nope'" in response.text and "'doc'" in response.text and "'query'" in response.text
    openai = httpx.post(f"{transformer.url}/v1/embeddings", json={"model": "bertdense", "input": "x",
                                                                 "prompt_name": "nope"}, timeout=60)
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "prompt_name"
    both = v2(predictor, "bertdense", TEXTS, prompt_name="doc", prompt="x: ")
    assert both.status_code == 400 and "not both" in both.text


def test_metadata_follows_the_chain_and_lists_prompts(bert_dense) -> None:
    _, predictor, transformer = bert_dense
    for server in (predictor, transformer):
        metadata = httpx.get(f"{server.url}/v2/models/bertdense", timeout=10).json()
        assert metadata["outputs"][0]["shape"] == [-1, 16]
        assert metadata["parameters"]["prompt_names"] == ["doc", "document", "query"]
        assert metadata["parameters"]["default_prompt_name"] == "query"


def test_max_seq_length_comes_from_the_model(bert_dense) -> None:
    path, predictor, transformer = bert_dense
    long_text = " ".join(["embedding"] * 200)
    expected = reference(path, [long_text])
    for server in (predictor, transformer):
        assert min_cosine(vectors(v2(server, "bertdense", [long_text])), expected) >= 0.9999


def test_qwen3_decoder_last_token_matches_sentence_transformers(qwen3) -> None:
    path, predictor, transformer = qwen3
    assert read_model_spec(path).pooling.modes == ("lasttoken",)
    assert "transformers backend" in predictor.log()
    for encode_options in ({"prompt_name": "query"}, {}):
        expected = reference(path, TEXTS, **encode_options)
        for server in (predictor, transformer):
            got = vectors(v2(server, "qwen", TEXTS, **encode_options))
            assert min_cosine(got, expected) >= 0.9999, (server.url, encode_options)
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_remote_code_model_is_refused_at_startup(tmp_path: Path) -> None:
    path = st_model(tmp_path / "model", backbone(tmp_path / "backbone", "bert"))
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="needs trust_remote_code"):
        start_server("predictor", ["--model_name", "custom", "--model_dir", str(path)], tmp_path / "predictor.log")


def test_unknown_module_is_refused_at_startup(tmp_path: Path) -> None:
    path = st_model(tmp_path / "model", backbone(tmp_path / "backbone", "bert"))
    modules = json.loads((path / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_LayerNorm",
                       "type": "sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm"})
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="is a LayerNorm"):
        read_model_spec(path)
    modules[2]["type"] = "my_package.MyModule"
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="not a sentence-transformers module"):
        read_model_spec(path)
