"""The retrieval benchmark's arithmetic (bench/retrieval.py) on vectors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from bench.retrieval import evaluate, load_pairs, ranks, recall_at

pytestmark = pytest.mark.unit


def test_ranks_and_recall_on_known_vectors() -> None:
    passages = np.eye(3)
    # Query 0 points at passage 0; query 1 is nearer passage 2; query 2 ties 0 and 2.
    queries = np.array([[1.0, 0.1, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 1.0]])
    found = ranks(queries, passages)
    assert found == [1, 2, 2]  # a tie counts against the model
    assert recall_at(found, 1) == pytest.approx(1 / 3)
    assert recall_at(found, 2) == 1.0


def test_the_pairs_file_has_a_few_dozen_distinct_pairs() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 30
    assert len({p for _, p in pairs}) == len(pairs) and len({q for q, _ in pairs}) == len(pairs)


def test_evaluate_reports_recall_of_an_embedder() -> None:
    pairs = [("a", "A"), ("b", "B"), ("c", "C")]
    vectors = {"a": [1, 0, 0], "A": [1, 0.1, 0], "b": [0, 1, 0], "B": [0, 0, 1], "c": [0, 0, 1]}
    vectors["C"] = [0, 1, 0.1]

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts], dtype=np.float64)

    report = evaluate(embed, pairs)
    assert report["recall_at_1"] == pytest.approx(0.333, abs=1e-3)
    assert report["recall_at_5"] == 1.0 and report["dimension"] == 3
