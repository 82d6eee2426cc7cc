"""The dev sentence-embedding model: numpy forward pass equal to sentence-transformers' own, and
its OpenAI-compatible server as the gateway and runners call it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from regtask_dev.llm_server import LlamaServer
from regtask_dev.minilm import MODEL_NAME, MiniLM, default_model_dir

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "minilm_reference.json"


def _reference() -> tuple[list[str], np.ndarray]:
    ref = json.loads(REFERENCE.read_text())
    return ref["sentences"], np.array(ref["embeddings"], dtype=np.float32)


def test_vectors_equal_sentence_transformers_to_1e_5() -> None:
    """Reference: SentenceTransformer(model dir).encode(...) with torch, recorded once."""
    sentences, expected = _reference()
    model = MiniLM(default_model_dir())
    batch = model.encode(sentences)  # padded batch of different lengths
    assert batch.vectors.shape == (len(sentences), 384)
    assert float(np.abs(batch.vectors - expected).max()) < 1e-5
    alone = model.encode([sentences[2]])  # no padding: the same vector
    assert float(np.abs(alone.vectors[0] - expected[2]).max()) < 1e-5
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.llm
def test_the_embeddings_endpoint_answers_like_openai(llm_server: LlamaServer) -> None:
    sentences, expected = _reference()
    url = f"{llm_server.embeddings_base_url}/embeddings"
    assert llm_server.embedding_model == MODEL_NAME
    answer = httpx.post(url, json={"model": MODEL_NAME, "input": sentences}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == MODEL_NAME and body["object"] == "list"
    assert [d["index"] for d in body["data"]] == list(range(len(sentences)))
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert float(np.abs(got - expected).max()) < 1e-5
    assert body["usage"]["prompt_tokens"] > len(sentences)
    one = httpx.post(url, json={"input": sentences[0]}, timeout=30).json()
    assert len(one["data"]) == 1
    wrong = httpx.post(url, json={"model": "gemma-3-270m", "input": "x"}, timeout=30)
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    empty = httpx.post(url, json={"model": MODEL_NAME, "input": []}, timeout=30)
    assert empty.status_code == 400
