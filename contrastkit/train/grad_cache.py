"""Gradient caching (Gao et al. 2021) and length-sorted chunking: big contrastive batches, bounded memory.

A contrastive loss needs every embedding of the batch at once, but the encoder's activations do not
have to be alive at once. Gradient caching splits the step in two passes:

1. embed every chunk of the batch without a graph and remember each chunk's RNG state;
2. compute the loss on the detached embeddings and back-propagate it to them (cheap: B × D);
3. re-embed each chunk with a graph, RNG restored so dropout draws the same masks, and push the
   cached embedding gradients through it.

Peak memory is one chunk's activations, whatever the batch size. Chunks are cut from texts sorted by
token length, so each is padded only to its own longest text.

Without caching, `embed_in_chunks` runs the same length-sorted chunks once, each keeping its graph:
the same maths as one padded forward pass, with far less padding.

@inproceedings{gao2021scaling,
  title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
  booktitle={RepL4NLP}, year={2021}
}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from contrastkit.devices import index_on
from contrastkit.heap import release_free_memory

EmbedFn = Callable[[list], Tensor]  # texts (or images' pixel tensors) → embeddings [n, D], graph when grad is on

# From this many chunks in a step on, the heap's free pages go back to the system between its phases
# (contrastkit/heap.py). The holes grow with the number of chunks: at batch 4,096 (256 chunks of 32) the
# trims took the peak from 1.42 to 1.34-1.35 GB (bf16, bench/memory_vs_batch.py); at batch 256 (16 chunks)
# faulting the pages in again cost 2-4 % of the step (4.35-4.73 against 4.25-4.36 s) for little memory.
HEAP_TRIM_MIN_CHUNKS = 32


class RandState:
    """A snapshot of the CPU (and CUDA) random generators, to replay dropout exactly."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)

    def to_dict(self) -> dict:
        """Plain tensors and lists, loadable with torch.load(weights_only=True)."""
        return {"cpu": self.cpu, "cuda": self.cuda}

    @classmethod
    def from_dict(cls, state: dict) -> "RandState":
        snapshot = cls.__new__(cls)
        snapshot.cpu, snapshot.cuda = state["cpu"], state["cuda"]
        return snapshot


def texts_per_forward(mini_batch_size: int | None, chunk_size: int | None, packs: bool,
                      device: torch.device) -> int | None:
    """How many texts one forward call of the encoder takes in a training step (None: a whole group).

    - With gradient caching, the mini-batch: memory is bound by it.
    - Else the whole group where the encoder packs (it cuts its own slabs, contrastkit/packing.py)
      and off the CPU: a GPU step of a small model waits on kernel launches, not on arithmetic, so
      fewer and larger calls run faster (bench/gpu_packing.py).
    - Else length-sorted chunks of `chunk_size`: less padding, activations that stay in the CPU's caches.
    """
    if mini_batch_size:
        return mini_batch_size
    return None if packs or device.type != "cpu" else chunk_size


def length_sorted_chunks(lengths: Sequence[int], chunk_size: int | None) -> list[np.ndarray]:
    """Indices sorted longest first, cut into chunks of `chunk_size` (None: one chunk of all)."""
    order = np.argsort([-n for n in lengths], kind="stable")
    size = chunk_size or max(len(order), 1)
    return [order[i:i + size] for i in range(0, len(order), size)]


def forward_chunks(count: int, per_forward: int | None, lengths: Callable[[], Sequence[int]]) -> list[np.ndarray]:
    """The chunks of indices a group of `count` items is embedded in (see `texts_per_forward`).

    When one call takes the whole group (`per_forward` None or at least `count`) the group goes in
    its own order: a padded call pads to its longest text whatever the order, and the packed
    forward sorts for itself. Then `lengths` (a tokenizer pass over the group) is never called.
    Else `length_sorted_chunks` of `lengths()`. An empty group is one empty chunk: the embed
    function is asked for the [0, D] embeddings of no items.
    """
    if per_forward is None or per_forward >= count:
        return [np.arange(count)]
    return length_sorted_chunks(lengths(), per_forward)


def _in_order(chunks: Sequence[np.ndarray], count: int) -> bool:
    """True when the chunks are one chunk holding 0..count-1 in order (nothing to put back in place)."""
    return len(chunks) == 1 and len(chunks[0]) == count and bool((chunks[0] == np.arange(count)).all())


def embed_in_chunks(embed_fn: EmbedFn, texts: Sequence, chunks: list[np.ndarray]) -> Tensor:
    """Embed `texts` (or any items) chunk by chunk (graphs kept) and return [N, D] in the original order."""
    if _in_order(chunks, len(texts)):
        return embed_fn(list(texts))
    out = torch.cat([embed_fn([texts[i] for i in chunk]) for chunk in chunks])
    return out[index_on(np.argsort(np.concatenate(chunks)), out.device)]


def grad_cache_backward(embed_fn: EmbedFn | Sequence[EmbedFn], groups: Sequence[Sequence],
                        chunks: Sequence[list[np.ndarray]], loss_fn: Callable[..., Tensor]) -> Tensor:
    """One gradient-cached backward pass; returns the (detached) loss.

    Args:
        embed_fn: texts → embeddings; called without a graph, then again with one. Or one such
            function per group (two towers: queries through one encoder, documents or images
            through another); a group's items are then whatever its function takes.
        groups: the batch's text groups (e.g. anchors [B], positives [B], negatives [M]).
        chunks: for each group, its chunks of indices (see `length_sorted_chunks`).
        loss_fn: called as loss_fn(*embeddings, one [n_g, D] tensor per group) → 0-dim loss.
            Parameters it holds (a learnable temperature) get their gradients in step 2.

    Parameter gradients accumulate into `.grad` exactly as `loss_fn(*embed(groups)).backward()` with
    the same chunks and the same starting RNG state would.
    """
    embed_fns = [embed_fn] * len(groups) if callable(embed_fn) else list(embed_fn)
    if len(embed_fns) != len(groups):
        raise ValueError(f"got {len(embed_fns)} embed functions for {len(groups)} groups")
    states: list[list[RandState]] = []
    cached: list[Tensor] = []
    with torch.no_grad():
        for embed_fn, texts, group_chunks in zip(embed_fns, groups, chunks):
            group_states, pieces = [], []
            for chunk in group_chunks:
                group_states.append(RandState())
                pieces.append(embed_fn([texts[i] for i in chunk]))
            states.append(group_states)
            embeddings = torch.cat(pieces)
            cached.append(embeddings[index_on(np.argsort(np.concatenate(group_chunks)), embeddings.device)])
    after_first_pass = RandState()
    # the heap's free pages back to the system between the phases (contrastkit/heap.py): many
    # mini-batches of other lengths would otherwise grow it with the batch size
    trim = sum(len(c) for c in chunks) >= HEAP_TRIM_MIN_CHUNKS
    if trim:
        release_free_memory()

    leaves = [e.detach().requires_grad_() for e in cached]
    loss = loss_fn(*leaves)
    loss.backward()

    for g, (embed_fn, texts, group_chunks, group_states, leaf) in enumerate(
            zip(embed_fns, groups, chunks, states, leaves)):
        if leaf.grad is None:  # this group does not reach the loss
            continue
        if g and trim:
            release_free_memory()
        for chunk, state in zip(group_chunks, group_states):
            state.restore()
            embeddings = embed_fn([texts[i] for i in chunk])
            embeddings.backward(leaf.grad[index_on(chunk, leaf.grad.device)])
    after_first_pass.restore()
    return loss.detach()
