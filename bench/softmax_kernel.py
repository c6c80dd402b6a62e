"""The attention probabilities' softmax and dropout in bf16: contrastkit.fast_softmax against torch's ops.

The packed forward's attention under bf16 autocast on the CPU: scores [b, 12, T, T] of slabs of
2,048 padded tokens (16 abstracts of 128 tokens, 32 texts of 64, 25 of 79, 32 queries of 37, 64
texts of 24), softmax over the keys, then dropout with the model's p = 0.1, or none (the demo's
recipe). Three ways:

- torch: `torch.softmax`, then `torch.nn.functional.dropout`;
- softmax + fast_dropout: torch's softmax, then contrastkit.fast_dropout's compiled pass (the
  trainer's path until this kernel);
- contrastkit: `contrastkit.fast_softmax.softmax_dropout`, one compiled pass forward and one backward.

"in a step" times the kernel between the two batched products that surround it in attention (q kᵀ
before, times v after), as the training step runs it: there the threads come from the products'
OpenMP work. Each way runs in turn, `--repeats` times per round, for `--rounds` rounds; the best
round counts.

    .venv/bin/python bench/softmax_kernel.py [--rounds 5] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

from _common import print_table, write_results

SLABS = [(16, 128), (32, 64), (25, 79), (32, 37), (64, 24)]  # (texts, tokens): b · T <= 2,048
HEADS, HEAD_SIZE = 12, 32


def main() -> None:
    import torch

    from contrastkit.fast_dropout import fast_dropout
    from contrastkit.fast_softmax import softmax_dropout

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    rows = []
    for p in (0.1, 0.0):
        ways = {"torch": lambda s: torch.nn.functional.dropout(torch.softmax(s, -1), p, True),
                "softmax + fast_dropout": lambda s: fast_dropout(torch.softmax(s, -1), p),
                "contrastkit": lambda s: softmax_dropout(s, p)}
        for texts, tokens in SLABS:
            generator = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(texts * HEADS, tokens, HEAD_SIZE, generator=generator).bfloat16()
                       for _ in range(3))
            scores = (torch.bmm(q, k.transpose(1, 2)) * HEAD_SIZE ** -0.5).view(texts, HEADS, tokens, tokens)
            scores[texts // 2:, ..., tokens - tokens // 4:] = float("-inf")  # shorter texts: padded keys
            leaf = scores.clone().requires_grad_()
            grad = torch.randn(scores.shape, generator=generator).bfloat16()

            def forward(way):
                with torch.no_grad():
                    way(scores)

            def forward_backward(way):
                way(leaf).backward(grad)

            def in_a_step(way):
                with torch.no_grad():
                    torch.bmm(q, k.transpose(1, 2))
                    torch.bmm(way(scores).view(texts * HEADS, tokens, tokens), v)

            steps = {"forward": forward, "forward + backward": forward_backward, "in a step (bmm, this, bmm)": in_a_step}
            best = {(name, step): float("inf") for name in ways for step in steps}
            for _ in range(args.rounds):
                for name, way in ways.items():
                    for step, run in steps.items():
                        run(way)  # warm-up
                        t0 = time.perf_counter()
                        for _ in range(args.repeats):
                            run(way)
                        best[name, step] = min(best[name, step], (time.perf_counter() - t0) / args.repeats)
            for step in steps:
                ms = {name: 1e3 * best[name, step] for name in ways}
                rows.append({"p": p, "slab": f"{texts} x {tokens}", "step": step, "torch_ms": ms["torch"],
                             "softmax_fast_dropout_ms": ms["softmax + fast_dropout"],
                             "contrastkit_ms": ms["contrastkit"], "vs_torch": ms["torch"] / ms["contrastkit"],
                             "vs_softmax_fast_dropout": ms["softmax + fast_dropout"] / ms["contrastkit"]})
    print_table(rows, ["p", "slab", "step", "torch_ms", "softmax_fast_dropout_ms", "contrastkit_ms", "vs_torch",
                       "vs_softmax_fast_dropout"])
    import numba

    meta = {"dtype": "bfloat16", "heads": HEADS, "rounds": args.rounds, "repeats": args.repeats,
            "timing": "best round of each way, ways in turn", "threads": torch.get_num_threads(),
            "numba_threading_layer": numba.threading_layer()}
    print(f"wrote {write_results('softmax_kernel', rows, meta)}")


if __name__ == "__main__":
    main()
