"""Small hand-made datasets and encoders for the evaluation tests."""

from __future__ import annotations

import numpy as np
import pytest


class TinyBeir:
    """The BeirDataset shape (corpus, queries, qrels, doc_text, split_queries) on hand data."""

    def __init__(self, corpus, queries, qrels):
        self.corpus, self.queries, self.qrels = corpus, queries, qrels
        self.split_queries = {q: t for q, t in queries.items() if q in qrels}

    def doc_text(self, doc_id):
        doc = self.corpus[doc_id]
        return (doc["title"] + " " + doc["text"]).strip()


class LookupEncoder:
    """Encodes each known text as a fixed vector; records what it was asked to encode."""

    def __init__(self, vectors: dict[str, list[float]], normalize: bool = True):
        self.vectors, self.normalize, self.calls = vectors, normalize, []

    def encode(self, texts, batch_size=32, show_progress=False):
        self.calls.append(list(texts))
        x = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        if self.normalize:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


@pytest.fixture
def tiny_beir():
    """Four docs on two topics, three judged queries (one of them with no relevant doc)."""
    corpus = {
        "d1": {"title": "Cats", "text": "cats purr"},
        "d2": {"title": "", "text": "dogs bark loudly"},
        "d3": {"title": "Felines", "text": "lions and cats"},
        "d4": {"title": "Weather", "text": "rain today"},
    }
    queries = {"q1": "about cats", "q2": "about dogs", "q3": "about rain", "q4": "unjudged"}
    qrels = {"q1": {"d3": 2, "d1": 1}, "q2": {"d2": 1, "d1": 0}, "q3": {"d4": 0}}
    return TinyBeir(corpus, queries, qrels)


@pytest.fixture
def tiny_encoder_vectors():
    """2-d vectors for tiny_beir's texts: cats point to x, dogs to y, rain to -x."""
    return {
        "Cats cats purr": [1.0, 0.1], "dogs bark loudly": [0.1, 1.0],
        "Felines lions and cats": [0.8, 0.5], "Weather rain today": [-1.0, 0.0],
        "about cats": [1.0, 0.0], "about dogs": [0.0, 1.0], "about rain": [-1.0, 0.2],
        "unjudged": [0.5, 0.5],
    }


@pytest.fixture
def lookup_encoder(tiny_encoder_vectors):
    """A LookupEncoder over tiny_encoder_vectors."""
    return LookupEncoder(tiny_encoder_vectors)
