"""Helpers for the loss tests: float64 random embeddings and sentence-transformers losses run on given embeddings."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn


class _GivenEmbeddings(nn.Module):
    """Stands in for a SentenceTransformer: each "feature batch" already holds its embeddings."""

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"sentence_embedding": features["embeddings"]}


@pytest.fixture
def st_loss() -> Callable[..., Tensor]:
    """``st_loss(LossClass, [emb_col1, emb_col2, ...], labels, **options)``: the loss's forward on those embeddings."""

    def run(loss_class: type, columns: list[Tensor], labels: Tensor | None = None, **options) -> Tensor:
        loss = loss_class(_GivenEmbeddings(), **options)
        return loss([{"embeddings": column} for column in columns], labels)

    return run


@pytest.fixture
def randn() -> Callable[..., Tensor]:
    """``randn(*shape, seed=0)``: reproducible float64 normal noise."""

    def make(*shape: int, seed: int = 0) -> Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: a second OpenMP thread only adds start-up and contention (10 ms a softmax under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
