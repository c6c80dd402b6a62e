"""Would a product that skips MKL's copy of the activations be faster? (fp32, one thread a process)

MKL spends about 8 % of its time in a training step copying ("packing") operands into its own layout
(perf, docs/benchmarks.md). bench/copy_free_product.cpp multiplies from the activations where they
lie (the weight laid out once, as a step could keep it). This times it against `torch.mm` (MKL) on
the forward products of a MiniLM layer at 2,314 rows (a Cranfield batch-32 stream's tokens): alone,
and with both cores busy (two processes, each timing its own products, as the two training streams
run). It also checks that both give the same output (to the bit where MKL sums K in one run).

    .venv/bin/python bench/copy_free_product.py [--seconds 6] [--out copy_free_product]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import print_table, write_results

ROWS = 2314
SHAPES = [(384, 1152), (384, 384), (384, 1536), (1536, 384)]  # (K, N): q/k/v, output, feed-forward in, out
BLOCKS = [(112, 384), (448, 384), (112, 192)]  # (rows, depth) a block of the copy-free product


def aligned(n: int) -> torch.Tensor:
    """n floats at a 64-byte boundary (the panels are read with aligned loads)."""
    buffer = torch.empty(n + 16)
    start = (-buffer.data_ptr() // 4) % 16
    return buffer[start:start + n]


def child(seconds: float) -> list[dict]:
    from contrastkit.fused_attention import build

    torch.set_num_threads(1)
    library = ctypes.CDLL(str(build(Path(__file__).with_name("copy_free_product.cpp"))))
    pointer = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    rows = []
    for k, n in SHAPES:
        x, w = torch.randn(ROWS, k), torch.randn(n, k)
        ours, mkl = torch.empty(ROWS, n), torch.empty(ROWS, n)
        panels = aligned(n * k)
        library.pack_panels(pointer(w), n, k, pointer(panels))
        calls = {"mkl": lambda: torch.mm(x, w.t(), out=mkl)}
        for mc, kc in BLOCKS:
            calls[f"copy-free {mc}x{kc}"] = (lambda mc=mc, kc=kc: library.product(
                pointer(x), pointer(panels), pointer(ours), ROWS, n, k, mc, kc))
        best = {}
        for name, call in calls.items():  # each for its share of the time, its best call
            call()
            times, started = [], time.perf_counter()
            while time.perf_counter() - started < seconds / len(calls):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            best[name] = 2 * ROWS * n * k / min(times) / 1e9
            if name != "mkl":  # the same sums, perhaps in another order (MKL splits long K)
                torch.testing.assert_close(ours, mkl, rtol=1e-4, atol=1e-4 * k ** 0.5)
                same_bits = torch.equal(ours, mkl)
        rows.append({"shape": f"[{ROWS}x{k}]x[{k}x{n}]", **{f"{name}_gflops": v for name, v in best.items()},
                     "same_bits_as_mkl": same_bits})
    return rows


def run(processes: int, seconds: float) -> list[list[dict]]:
    command = [sys.executable, __file__, "--child", "--seconds", str(seconds)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outputs = [c.communicate()[0] for c in children]
    if any(c.returncode for c in children):
        raise SystemExit("a child run failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="time per shape and process")
    parser.add_argument("--out", default="copy_free_product")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.seconds)))
        return
    table = []
    for processes in (1, 2):
        for index, rows in enumerate(run(processes, args.seconds)):
            for row in rows:
                best = max(v for key, v in row.items() if key.startswith("copy-free"))
                table.append({"cores_busy": processes, "process": index, **row,
                              "best_copy_free_over_mkl": best / row["mkl_gflops"]})
    columns = ["cores_busy", "process", "shape", "mkl_gflops"] + [
        f"copy-free {mc}x{kc}_gflops" for mc, kc in BLOCKS] + ["best_copy_free_over_mkl", "same_bits_as_mkl"]
    print_table(table, columns)
    print("written to", write_results(args.out, table, {"rows": ROWS, "threads_per_process": 1}))


if __name__ == "__main__":
    main()
