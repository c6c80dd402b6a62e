"""Global in-batch negatives across ranks on torch.distributed (gloo on CPU, NCCL on GPU).

Each rank embeds its own shard of the global batch. `gather_with_local_grad` all-gathers the
embeddings (B × D floats each way, never activations) so every rank computes the loss of the
*whole* global batch, with gradients flowing only into its own shard. Summing the parameter
gradients over ranks (`all_reduce_gradients`) then gives exactly the gradient of the global loss:

    ∂L/∂θ = Σ_r (∂L/∂e_r)(∂e_r/∂θ)          (e_r: rank r's embeddings)

This is open_clip's gather (local slice kept with its graph), with an explicit sum instead of DDP's
mean, so it composes with gradient caching: the gather sits inside the loss, between the cached
embeddings and the encoder.

A rank that dies must not leave the others hanging: collectives run with a timeout, every rank
writes a heartbeat into the rendezvous store, and a failed collective is reported as a
`TrainingError` naming the ranks whose heartbeat stopped. A rank that finishes leaves cleanly
(`leave_ranks`): it stops its heartbeat, waits for the others and closes the process group, since
a process that exits with gloo's threads still alive can abort ("terminate called without an
active exception") after its work is done.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from contrastkit.errors import ConfigError

HEARTBEAT_EVERY_S = 1.0
_heartbeat: tuple[threading.Thread, threading.Event] | None = None
_opened_group = False  # whether init_distributed opened the process group (and so should close it)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size, and whether it is rank 0."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_s: float = 30.0) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); single process if none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    global _opened_group
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        _opened_group = True
    context = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())
    _start_heartbeat(context)
    return context


def join_ranks(batch_size: int, timeout_s: float, device: str, drop_last: bool = True,
               ) -> tuple[DistContext, torch.device]:
    """Join the ranks (see `init_distributed`) and pick this rank's device; every batch must split evenly
    (batch_size a multiple of the ranks, and no short last batch: drop_last)."""
    context = init_distributed(timeout_s)
    if batch_size % context.world_size:
        raise ConfigError(f"batch_size {batch_size} must be divisible by the number of ranks "
                          f"({context.world_size}): each rank embeds an equal shard of the global batch")
    if context.world_size > 1 and not drop_last:
        raise ConfigError(f"drop_last: false with {context.world_size} ranks: a last batch smaller than "
                          f"batch_size cannot be shared evenly among the ranks; keep drop_last: true")
    return context, resolve_device(device, context)


def leave_ranks(context: DistContext) -> None:
    """The end of training on every rank: stop the heartbeat, wait for all ranks, close the group we opened."""
    global _heartbeat, _opened_group
    if not context.enabled:
        return
    if _heartbeat is not None:
        thread, stop = _heartbeat
        stop.set()
        thread.join(timeout=5 * HEARTBEAT_EVERY_S)
        _heartbeat = None
    dist.barrier()
    if _opened_group and dist.is_initialized():
        dist.destroy_process_group()
        _opened_group = False


def resolve_device(name: str, context: DistContext) -> torch.device:
    """"auto": this rank's GPU (LOCAL_RANK) when CUDA is there, else the CPU; or "cpu" / "cuda"."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) if context.enabled else 0
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def gather_with_local_grad(local: Tensor, context: DistContext) -> Tensor:
    """[n_r, D] on each rank → [Σ n_r, D] on every rank, in rank order; only the local slice keeps its graph.

    Ranks may hold different row counts (hard negatives are pooled, a pair may bring fewer): the
    sizes are exchanged first and every slice is padded to the largest for the all_gather.
    """
    if not context.enabled:
        return local
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(context.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    largest = int(max(sizes))
    padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local.detach()
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    pieces = [g[:int(n)] for g, n in zip(gathered, sizes)]
    pieces[context.rank] = local
    return torch.cat(pieces)


def all_reduce_gradients(params: list[torch.nn.Parameter], context: DistContext) -> None:
    """Sum the gradients of `params` over ranks (each rank holds its shard's part of ∂L/∂θ)."""
    if not context.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather_objects(obj: object, context: DistContext) -> list[object]:
    """Every rank's `obj`, in rank order (e.g. RNG states for a checkpoint)."""
    if not context.enabled:
        return [obj]
    out: list[object] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def _start_heartbeat(context: DistContext) -> None:
    global _heartbeat
    store = _store()
    if store is None or _heartbeat is not None:
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                store.set(f"contrastkit/heartbeat/{context.rank}", str(time.time()))
            except Exception:  # the store went away with its host: nothing more to report to
                return
            stop.wait(HEARTBEAT_EVERY_S)

    thread = threading.Thread(target=beat, name="contrastkit-heartbeat", daemon=True)
    thread.start()
    _heartbeat = (thread, stop)


def _store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None


def lost_ranks(context: DistContext, stale_after_s: float = 3 * HEARTBEAT_EVERY_S) -> list[int]:
    """Ranks whose heartbeat stopped (rank 0 hosts the store: if it is unreachable, rank 0 is lost)."""
    store = _store()
    if store is None:
        return []
    now, lost = time.time(), []
    for rank in range(context.world_size):
        if rank == context.rank:
            continue
        try:
            store.set_timeout(timedelta(seconds=2))
            last = float(store.get(f"contrastkit/heartbeat/{rank}").decode())
        except Exception:
            return [0] if context.rank != 0 else lost
        if now - last > stale_after_s:
            lost.append(rank)
    return lost


def describe_failure(context: DistContext, error: Exception) -> str:
    """One line for a failed collective: which ranks were lost, and the backend's own words."""
    time.sleep(HEARTBEAT_EVERY_S * 4)  # a lost rank's heartbeat is then older than stale_after_s
    lost = lost_ranks(context)
    who = f"lost rank {', '.join(map(str, lost))}" if lost else "lost contact with another rank"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"rank {context.rank}/{context.world_size}: {who} (a collective failed: {first_line}); "
            f"stopping. Resume all ranks from the newest checkpoint with --resume")
