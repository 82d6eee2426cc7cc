"""Retrieval quality of an embedding model behind an OpenAI-compatible ``/v1/embeddings``.

The pairs of ``bench/retrieval_pairs.json`` (a query and its one relevant passage) are embedded
through the server; every query ranks all passages by cosine similarity, and recall@k is the
share of queries whose own passage is among the top k. Part of ``make bench-llm``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

PAIRS_FILE = Path(__file__).with_name("retrieval_pairs.json")
Matrix = npt.NDArray[np.float64]


def load_pairs(path: Path = PAIRS_FILE) -> list[tuple[str, str]]:
    doc = json.loads(path.read_text())
    return [(pair["query"], pair["passage"]) for pair in doc["pairs"]]


def ranks(queries: Matrix, passages: Matrix) -> list[int]:
    """For query i, the 1-based rank of passage i among all passages (cosine similarity)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    p = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    scores = q @ p.T
    own = np.diag(scores)
    # Ties count against the model: a passage scoring equal to the right one ranks above it.
    return [int((row >= own[i]).sum()) for i, row in enumerate(scores)]


def recall_at(found: list[int], k: int) -> float:
    return sum(1 for rank in found if rank <= k) / len(found)


def http_embedder(base_url: str, model: str, batch: int = 16) -> Callable[[list[str]], Matrix]:
    """Vectors from ``{base_url}/embeddings`` (OpenAI's request and answer)."""

    def embed(texts: list[str]) -> Matrix:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), batch):
            answer = httpx.post(
                f"{base_url}/embeddings",
                json={"model": model, "input": texts[start : start + batch]},
                timeout=120,
            )
            answer.raise_for_status()
            data = sorted(answer.json()["data"], key=lambda d: d["index"])
            vectors += [d["embedding"] for d in data]
        return np.array(vectors, dtype=np.float64)

    return embed


def evaluate(embed: Callable[[list[str]], Matrix], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    queries = embed([query for query, _ in pairs])
    passages = embed([passage for _, passage in pairs])
    found = ranks(queries, passages)
    return {
        "pairs": len(pairs),
        "dimension": int(queries.shape[1]),
        "recall_at_1": round(recall_at(found, 1), 3),
        "recall_at_5": round(recall_at(found, 5), 3),
        "mean_rank": round(sum(found) / len(found), 2),
    }
