"""The dropout kernel alone: contrastkit.fast_dropout against torch's CPU dropout, forward and backward.

One activation of the default model's training step ([16, 128, 384] float32: a chunk of 16 texts of
128 tokens, hidden size 384), p = 0.1, in training mode. Each kernel runs in turn, `--repeats` times
per round, for `--rounds` rounds; the best round counts (the least disturbed by other processes).

    .venv/bin/python bench/dropout_kernel.py [--rounds 5] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

from _common import print_table, write_results


def main() -> None:
    import torch

    from contrastkit.fast_dropout import fast_dropout

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)
    shape, p = (16, 128, 384), 0.1
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    kernels = {"torch": lambda t: torch.nn.functional.dropout(t, p, True),
               "contrastkit": lambda t: fast_dropout(t, p, True)}

    def forward(kernel):
        with torch.no_grad():
            kernel(x)

    def forward_backward(kernel):
        kernel(x).backward(grad)

    best = {(name, step): float("inf") for name in kernels for step in ("forward", "forward + backward")}
    for _ in range(args.rounds):
        for name, kernel in kernels.items():
            for step, run in (("forward", forward), ("forward + backward", forward_backward)):
                run(kernel)  # warm-up
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    run(kernel)
                best[name, step] = min(best[name, step], (time.perf_counter() - t0) / args.repeats)
    rows = [{"step": step, "torch_ms": 1e3 * best["torch", step], "contrastkit_ms": 1e3 * best["contrastkit", step],
             "speedup": best["torch", step] / best["contrastkit", step]} for step in ("forward", "forward + backward")]
    print_table(rows, ["step", "torch_ms", "contrastkit_ms", "speedup"])
    meta = {"shape": list(shape), "p": p, "rounds": args.rounds, "repeats": args.repeats,
            "timing": "best round of each kernel, kernels in turn", "threads": torch.get_num_threads()}
    print(f"wrote {write_results('dropout_kernel', rows, meta)}")


if __name__ == "__main__":
    main()
