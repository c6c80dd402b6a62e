"""Pooling: turn token embeddings [B, T, D] into one sentence embedding [B, D].

Pure functions; the attention mask [B, T] (1 = real token, 0 = padding) says which tokens count.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLING_MODES = ("mean", "cls", "last")


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the real tokens' embeddings (Reimers & Gurevych 2019, Sentence-BERT).

    e = Σ_t m_t h_t / max(Σ_t m_t, 1e-9);  h: [B, T, D], m: [B, T] → e: [B, D].
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def cls_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """The first token's embedding ([CLS] for BERT-like models): [B, T, D] → [B, D]."""
    del attention_mask  # the first position is real for right-padded inputs
    return token_embeddings[:, 0]


def last_token_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """The last real token's embedding (decoder models, e.g. E5-Mistral): [B, T, D] → [B, D].

    Works for right and left padding: the index is that of the last position whose mask is 1.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * positions).argmax(dim=1)
    return token_embeddings[torch.arange(token_embeddings.shape[0], device=last.device), last]


def pool(token_embeddings: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Pool with the named mode: one of "mean", "cls", "last"."""
    if mode == "mean":
        return mean_pool(token_embeddings, attention_mask)
    if mode == "cls":
        return cls_pool(token_embeddings, attention_mask)
    if mode == "last":
        return last_token_pool(token_embeddings, attention_mask)
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
