"""Where a training step's time goes on a CUDA GPU: contrastkit's Trainer against sentence-transformers.

After every tool has stepped through the same batches once:
- wall time per step, each step timed alone (synchronised before and after), and back to back
  (the batches one after another, one synchronisation at the end, as a training run goes: the host
  can then queue the next step's work while the GPU still runs this one's);
- under torch.profiler, one step: the time the GPU spent in kernels (a step far longer than its
  kernels waits on the host: launches, Python, synchronisations), the host-device synchronisations,
  and the operators that take the most host and device time;
- where each synchronisation comes from: the Python line that made the host wait for the device
  (torch.cuda.set_sync_debug_mode), for one step of each tool.

    python bench/gpu_step_profile.py --model PATH [--pairs debian_train_pairs.jsonl] [--batch 64 256]
        [--out gpu_step_profile]

Run it twice on one machine, once with an older contrastkit first on PYTHONPATH and `--out
NAME_before`, to compare two versions of the trainer on the same GPU.
"""

from __future__ import annotations

import argparse
import collections
import time
import traceback
import warnings

import gpu_packing
from _common import SHARED, write_results


def sync_sites(step, batch) -> dict[str, int]:
    """The Python lines (outside torch) at which one step made the host wait for the device."""
    import torch

    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/torch/" not in f.filename and "warnings" not in f.filename]
        where = frames[-1] if frames else None
        sites[f"{'/'.join(where.filename.split('/')[-2:])}:{where.lineno} {where.line}" if where else "?"] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return dict(sites.most_common())


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
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    torch.cuda.synchronize()
    back_to_back = (time.perf_counter() - t0) / len(batches)
    print(f"{name}: steps alone, ms: {' '.join(f'{1000 * w:.0f}' for w in walls)}")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(batches[0])
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    host_us = sum(e.self_cpu_time_total for e in events)
    syncs = {e.key: e.count for e in events
             if any(s in e.key for s in ("Synchronize", "cudaMemcpy", "item", "_local_scalar_dense"))}
    sites = sync_sites(step, batches[0])
    row = {"tool": name, "wall_ms": 1000 * sum(walls) / len(walls), "median_alone_ms": 1000 * sorted(walls)[len(walls) // 2],
           "alone_ms": [1000 * w for w in walls], "back_to_back_ms": 1000 * back_to_back,
           "kernel_ms": kernel_us / 1000, "host_ms": host_us / 1000, "syncs": syncs, "sync_sites": sites}
    print(f"\n=== {name}: {row['wall_ms']:.1f} ms a step alone, {row['back_to_back_ms']:.1f} back to back "
          f"(means of {len(walls)}); in the profiled step kernels {row['kernel_ms']:.1f} ms, host "
          f"{row['host_ms']:.1f} ms; syncs {syncs}")
    for site, count in sites.items():
        print(f"    {count:3d} × {site}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default=str(SHARED / "debian-packages" / "train_pairs.jsonl"))
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--out", default="gpu_step_profile")
    args = parser.parse_args()

    import torch

    import contrastkit
    from contrastkit.data import read_pairs

    all_pairs = read_pairs(args.pairs)
    rows = []
    for batch in args.batch:
        pairs = all_pairs[:batch * args.steps]
        batches = [pairs[i:i + batch] for i in range(0, len(pairs), batch)]
        for bf16 in {"fp32": (False,), "bf16": (True,), "both": (False, True)}[args.precision]:
            precision = "bf16 autocast" if bf16 else "fp32"
            tools = {f"contrastkit defaults, batch {batch}, {precision}": gpu_packing.ours_step_fn(args.model, pairs, 128, bf16),
                     f"sentence-transformers MNRL, batch {batch}, {precision}": gpu_packing.st_step_fn(args.model, 128, bf16)}
            rows += [{"batch": batch, "precision": precision, **profile_tool(name, step, batches)}
                     for name, step in tools.items()]
    print("\nbatch  precision      tool                                      alone ms (median)  back-to-back ms  syncs")
    for r in rows:
        print(f"{r['batch']:5d}  {r['precision']:13s}  {r['tool'][:40]:40s}  {r['wall_ms']:8.1f} ({r['median_alone_ms']:6.1f})  "
              f"{r['back_to_back_ms']:15.1f}  {r['syncs'].get('cudaStreamSynchronize', 0):5d}")
    meta = {"batches": args.batch, "steps": args.steps, "max_seq_length": 128, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "contrastkit_from": contrastkit.__file__}
    print(f"wrote {write_results(args.out, rows, meta)}")


if __name__ == "__main__":
    main()
