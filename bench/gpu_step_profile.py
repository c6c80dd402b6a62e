"""Where a training step's time goes on a CUDA GPU: contrastkit's Trainer against sentence-transformers.

One step each (after every tool has stepped through the same batches once), under torch.profiler:
the wall time, the time the GPU spent in kernels (a step far longer than its kernels waits on the
host: launches, Python, synchronisations), the host-device synchronisations, and the operators
that take the most host and device time.

    python bench/gpu_step_profile.py --model PATH [--pairs debian_train_pairs.jsonl] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import gpu_packing
from _common import SHARED, write_results


def profile_tool(name: str, step, batches) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    for b in batches:  # warm: every shape once
        step(b)
    torch.cuda.synchronize()
    walls = []
    for b in batches:
        t0 = time.perf_counter()
        step(b)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(batches[0])
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    syncs = {e.key: e.count for e in events
             if any(s in e.key for s in ("Synchronize", "cudaMemcpy", "item", "_local_scalar_dense"))}
    print(f"\n=== {name}: wall {1000 * sum(walls) / len(walls):.1f} ms a step (mean of {len(walls)}), "
          f"kernels {kernel_us / 1000:.1f} ms in the profiled step; syncs {syncs}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    return {"tool": name, "wall_ms": 1000 * sum(walls) / len(walls), "kernel_ms": kernel_us / 1000, "syncs": syncs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default=str(SHARED / "debian-packages" / "train_pairs.jsonl"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    from contrastkit.data import read_pairs

    pairs = read_pairs(args.pairs)[:args.batch * args.steps]
    batches = [pairs[i:i + args.batch] for i in range(0, len(pairs), args.batch)]
    rows = []
    for bf16 in (False, True):
        precision = "bf16 autocast" if bf16 else "fp32"
        tools = {f"contrastkit defaults, {precision}": gpu_packing.ours_step_fn(args.model, pairs, 128, bf16),
                 f"contrastkit, packed, {precision}": gpu_packing.ours_step_fn(args.model, pairs, 128, bf16, "packed"),
                 f"sentence-transformers MNRL, {precision}": gpu_packing.st_step_fn(args.model, 128, bf16)}
        rows += [profile_tool(name, step, batches) for name, step in tools.items()]
    print(f"wrote {write_results('gpu_step_profile', rows, {'batch': args.batch, 'max_seq_length': 128})}")


if __name__ == "__main__":
    main()
