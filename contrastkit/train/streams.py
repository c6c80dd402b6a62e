"""A CPU training step as parallel streams: each core embeds and back-propagates its own part of the batch.

On a CPU every operator of a step spreads its work over torch's threads and joins them at its end:
thousands of joins a step, and between two operators the Python and dispatch work of the next one
runs on one core while the others wait. On the 2-core machine here the second core waited for 18 %
of a Cranfield batch-32 bf16 step (perf: torch's OpenMP worker spinning; docs/training.md).

Here the step's texts are cut into `streams` contiguous parts of about equal token counts, and each
part is embedded and back-propagated by a thread of its own holding its share of the cores
(`torch.set_num_threads` is per thread; the operators release the GIL), so no operator waits for
another core. The loss still sees the whole batch, as gradient caching does
(Gao et al. 2021): the parts' embeddings are joined, the loss and its gradient with respect to every
embedding computed once on the main thread, and each stream then pushes its embeddings' gradient
through its own graph. Every in-batch negative stays; the gradients are those of one pass.

Measured on that machine (bf16, whole runs): debian-packages batch 64 +6 to +15 %; Cranfield batch 32
nothing measurable, as each stream pays all of the step's per-operator work for half its texts;
peak memory +0.2-0.3 GB (docs/training.md).

Repeatable to the bit: the main thread draws one seed per stream from torch's generator, in order,
and each stream draws its dropout seeds from a generator of its own (`fast_dropout.seeds_from`);
every parameter receives one gradient per stream, and as two additions onto a zeroed or empty
`.grad` commute, the order in which the streams finish changes nothing. The word embeddings'
gradient arrives as sparse rows (packing.embed_tokens), summed into `.grad` row by row: each
stream's rows are coalesced first (`coalesce_sparse_gradients`), so that each row too receives one
addition per stream.

@inproceedings{gao2021scaling,
  title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
  booktitle={RepL4NLP}, year={2021}
}
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit.fast_dropout import draw_seed, draws_from_torch, seeds_from


def stream_count(requested: int | None, device: torch.device, packs: bool, model: nn.Module) -> int:
    """How many streams a step runs as: `requested` (at most one per thread), or 1.

    None: 2 where torch runs on exactly 2 threads, the only machine this was measured on (more
    threads: set `cpu_streams` and measure, bench/throughput.py). One stream where the streams cannot
    run or repeat: off the CPU, for models that do not pack, with a single thread, or while some
    dropout of the model draws from torch's shared generator (torch's own nn.Dropout, `fast_dropout:
    false`), whose draws the threads would take in a varying order.
    """
    threads = torch.get_num_threads()
    wanted = (2 if threads == 2 else 1) if requested is None else min(requested, threads)
    if wanted < 2 or device.type != "cpu" or not packs:
        return 1
    return 1 if any(draws_from_torch(m) for m in model.modules()) else wanted


def balanced_cuts(lengths: Sequence[int], parts: int, carried: Sequence[int] | None = None) -> list[int]:
    """Cut points 0 = c₀ ≤ c₁ ≤ … ≤ c_parts = len(lengths) giving contiguous parts that even out the
    streams' loads: part s joins the `carried[s]` tokens stream s already holds (its shares of the
    step's other groups; none by default), and each cut sits at the item boundary nearest to where
    the loads would be equal. Every part is non-empty when there are at least `parts` items.

    Cutting where the running total first passes its share instead gives the crossing item to the
    earlier part every time: on Cranfield batch 32 the first of two streams held 5-10 % more tokens
    at most steps and the other core waited for it (docs/training.md).
    """
    n = len(lengths)
    if n < parts:
        raise ValueError(f"cannot cut {n} texts into {parts} non-empty parts")
    carried = [0] * parts if carried is None else list(carried)
    prefix = np.concatenate([[0], np.cumsum(lengths)])
    each = (sum(carried) + prefix[-1]) / parts  # every stream's load once the loads are even
    cuts = [0]
    for k in range(1, parts):
        target = k * each - sum(carried[:k])  # this group's tokens that streams 0..k-1 should take
        right = int(np.searchsorted(prefix, target))  # the first boundary at or past the target
        cut = right if right == 0 or prefix[min(right, n)] - target <= target - prefix[right - 1] else right - 1
        cuts.append(min(max(cut, cuts[-1] + 1), n - (parts - k)))  # at least one text each side
    return cuts + [n]


def _coalesced(grad: Tensor) -> Tensor:
    return grad.coalesce() if grad.is_sparse else grad


def coalesce_sparse_gradients(parameters: Sequence[nn.Parameter]) -> list:
    """Hooks that coalesce each sparse gradient of `parameters` (one row per index) before autograd
    adds it into `.grad`; returns the new hook handles (`.remove()` them to undo).

    One per parameter: a parameter that holds this hook already (a second Trainer on the same
    encoder) gets no second one.
    """
    handles = []
    for p in parameters:
        known = getattr(p, "_contrastkit_coalesce_hook", None)
        hooks = known.hooks_dict_ref() if known is not None else None
        if hooks is not None and hooks is p._backward_hooks and known.id in hooks:  # still on this parameter
            continue
        handle = p.register_hook(_coalesced)
        p._contrastkit_coalesce_hook = handle
        handles.append(handle)
    return handles


class StreamPool:
    """`streams` threads, each running torch's operators on its share of the process's threads."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        per_stream = max(1, torch.get_num_threads() // streams)
        self._pool = ThreadPoolExecutor(streams, thread_name_prefix="contrastkit-stream",
                                        initializer=torch.set_num_threads, initargs=(per_stream,))

    def map(self, fn: Callable, items: Sequence) -> list:
        """[fn(item) for item in items], one item per thread at once; re-raises the first failure."""
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _lowest_priority() -> None:
    """This thread at the lowest CPU priority, on Linux (where each thread has a nice value of its own; the
    same call elsewhere would lower the whole process), with one torch thread."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not allowed here: the thread runs at the process's priority
            pass


class Lookahead:
    """Prepares the next step's input on a thread of the lowest priority while this step computes.

    Tokenizing and packing a step's texts (`Trainer._stream_parts`) ran on the main thread between two
    steps while both cores waited: 15-17 ms of a Cranfield batch-32 step of 1.2-1.3 s on the 2-core Xeon
    here. At nice 19 the thread runs in the moments a core has nothing to do (the streams' uneven
    finishes, the optimizer step's serial parts): it took 4 ms (median) from the streams' step it
    overlapped, against 8-11 ms at the streams' priority (docs/training.md). The trainer submits step
    k + 1 before it takes step k's, so two submissions may wait at once; a third drops the oldest.
    """

    KEEP = 2

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="contrastkit-lookahead", initializer=_lowest_priority)
        self._pending: dict[Hashable, Future] = {}

    def submit(self, key: Hashable, fn: Callable, *args) -> None:
        """Start fn(*args) for the step that `key` names."""
        self._pending.pop(key, None)
        self._pending[key] = self._pool.submit(fn, *args)
        while len(self._pending) > self.KEEP:
            self._pending.pop(next(iter(self._pending))).cancel()

    def take(self, key: Hashable):
        """fn(*args) of the submission for `key` once it has run (its exception re-raised), or None when there
        is none; a submission is taken once."""
        future = self._pending.pop(key, None)
        return None if future is None else future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()


def stream_backward(pool: StreamPool, parts: Sequence, embed: Callable[[object], list[Tensor]],
                    loss_on: Callable[..., Tensor]) -> Tensor:
    """Forward and backward of one step as parallel streams, one per entry of `parts`; returns the loss.

    parts[s]: stream s's shares of the groups (anchors, positives, ...), in the form `embed` takes
    (the trainer's: one packing plan of all of them, tokenized on the calling thread); embed(parts[s])
    → the embeddings of its share of each group, in group order, run on the stream's thread (autocast
    and grad mode are per thread: `embed` sets them); loss_on(*embeddings of each whole group). Each
    stream embeds its shares under its own
    dropout seeds, the loss runs here on the joined embeddings, and each stream back-propagates its
    part of the loss's gradient.
    """
    seeds = [draw_seed() for _ in parts]  # in order, on this thread: the run repeats

    def forward(s: int) -> list[Tensor]:
        with seeds_from(seeds[s]):
            return embed(parts[s])

    embeddings = pool.map(forward, range(len(parts)))
    leaves = [[e.detach().requires_grad_() for e in stream] for stream in embeddings]
    groups = len(embeddings[0])
    loss = loss_on(*(torch.cat([stream[g] for stream in leaves]) for g in range(groups)))
    loss.backward()

    def backward(s: int) -> None:
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves[s]]
        torch.autograd.backward(embeddings[s], grads)

    pool.map(backward, range(len(parts)))
    return loss
