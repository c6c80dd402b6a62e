"""Batches without false in-batch negatives: no text appears twice in one batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def no_duplicate_batches(texts_per_example: Sequence[Sequence[str]], batch_size: int, seed: int, epoch: int,
                         *, drop_last: bool = True, sources: Sequence[str] | None = None) -> list[list[int]]:
    """Shuffle examples and cut batches in which no text (anchor, positive or negative) repeats.

    Two examples that share a text would be each other's in-batch negative while being about the same
    thing: a false negative. An example that clashes waits for a later batch (as sentence-transformers'
    NoDuplicatesBatchSampler). With `sources`, each batch holds examples of one source only (one data
    set per batch, so negatives are not trivially easy). Deterministic in (seed, epoch).

    Returns the batches as lists of example indices; a last incomplete batch is kept unless drop_last.
    """
    rng = np.random.default_rng([seed, epoch])
    if sources is None:
        pools = [list(rng.permutation(len(texts_per_example)))]
    else:
        by_source: dict[str, list[int]] = {}
        for i, source in enumerate(sources):
            by_source.setdefault(source, []).append(i)
        pools = [list(rng.permutation(idx)) for _, idx in sorted(by_source.items())]
    batches: list[list[int]] = []
    for pool in pools:
        batches.extend(_batches_of(pool, texts_per_example, batch_size, drop_last))
    if sources is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _batches_of(pool: list[int], texts_per_example: Sequence[Sequence[str]], batch_size: int,
                drop_last: bool) -> list[list[int]]:
    remaining = [int(i) for i in pool]
    batches = []
    while remaining:
        batch, seen, deferred = [], set(), []
        for i in remaining:
            texts = set(texts_per_example[i])
            if len(batch) < batch_size and not (texts & seen):
                batch.append(i)
                seen |= texts
            else:
                deferred.append(i)
        if len(batch) < batch_size and drop_last:
            break
        batches.append(batch)
        remaining = deferred
    return batches
